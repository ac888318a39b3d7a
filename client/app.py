"""The hospital's Flower ClientApp: thin handlers over :mod:`client.site`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flwr.app import ArrayRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from client.secagg import secagg_when_requested
from common.config import RunConfig
from common.consortium_setup import SETUP, ConsortiumSetup, SetupMissing, acknowledgement
from common.protocol import (
    ARRAYS,
    CONFIG,
    METRICS,
    QUERY_KIND,
    SITE,
    RoundConfig,
    SiteMetrics,
    refusal,
    site_record,
)


def build_client_app(
    overrides: dict[str, Any] | None = None,
    *,
    mods: Sequence[Mod] = (),
    train_mods: Sequence[Mod] = (),
) -> ClientApp:
    """A ClientApp whose run config is Flower's, updated with ``overrides``.

    ``flwr run`` uses the module-level ``app`` (no overrides); ``cancer-alpha simulate``
    passes its options as overrides. The handlers are the same either way. ``mods`` wrap
    every handler and see what leaves the site; ``train_mods`` run inside secure
    aggregation, next to the training handler, and see its reply before it is masked.
    """
    extra = dict(overrides or {})
    app = ClientApp(mods=list(mods))

    def setup_site(context: Context):
        import torch  # noqa: F401 - Flower converts weights only once torch is imported

        from client.site_cache import load_site  # kept in memory by the site worker

        cfg = RunConfig.from_flower({**dict(context.run_config), **extra})
        return cfg, load_site(dict(context.node_config), cfg)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        from client.site import describe

        if msg.content[CONFIG].get(QUERY_KIND) == SETUP:
            setup = ConsortiumSetup.from_records(msg.content)
            setup.store(context.state)
            return Message(content=acknowledgement(setup), reply_to=msg)
        cfg, site = setup_site(context)
        private = cfg.dp == "distributed"
        return Message(content=describe(site, private=private).to_record(), reply_to=msg)

    @app.train(mods=[secagg_when_requested, *train_mods])
    def train(msg: Message, context: Context) -> Message:
        from client import secagg
        from client.dp import RoundRefused, site_privacy
        from client.privacy import LedgerError
        from client.privacy_guard import check_acknowledged, ledger_error_reply
        from client.site import initial_state, train_round

        secure = secagg.is_secure_round(msg.content)
        # SecAgg+: the legacy fit format; the mod masks the reply
        config = secagg.round_config_record(msg.content) if secure else msg.content[CONFIG]
        rc = RoundConfig.from_record(config)
        if rc.noise_plan is not None:
            return distributed_reply(msg, context, rc, secure)
        try:
            setup = ConsortiumSetup.stored(context.state, rc.setup_digest)
        except SetupMissing as exc:
            return setup_missing_reply(msg, exc)
        cfg, site = setup_site(context)
        if secure:
            state = secagg.received_state(msg.content, initial_state(setup, cfg))
        else:
            state = msg.content[ARRAYS].to_torch_state_dict()
        try:
            privacy = site_privacy(site.name, site.train.n, dict(context.node_config), cfg)
            check_acknowledged(privacy, site.name, config)
            new_state, metrics = train_round(site, state, setup, rc, cfg, privacy=privacy,
                                             run_id=str(msg.metadata.run_id), config=config)
        except LedgerError as exc:
            return ledger_error_reply(msg, exc)
        except RoundRefused as exc:
            content = refusal(site.name, str(exc))
            if secure:  # weight 0: the sum of the others is unchanged
                secagg.with_masked_update(content, secagg.update_of(state, state), 0)
            return Message(content=content, reply_to=msg)
        content = RecordDict({METRICS: metrics.to_record(), SITE: site_record(site.name)})
        if secure:
            secagg.with_masked_update(content, secagg.update_of(new_state, state), site.train.n)
        else:
            content[ARRAYS] = ArrayRecord(new_state)
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        from client.site import evaluate_round

        rc = RoundConfig.from_record(msg.content[CONFIG])
        try:
            setup = ConsortiumSetup.stored(context.state, rc.setup_digest)
        except SetupMissing as exc:
            return setup_missing_reply(msg, exc)
        cfg, site = setup_site(context)
        metrics = evaluate_round(site, msg.content[ARRAYS].to_torch_state_dict(), setup, cfg)
        content = RecordDict({METRICS: metrics.to_record(), SITE: site_record(site.name)})
        return Message(content=content, reply_to=msg)

    def distributed_reply(msg: Message, context: Context, rc: RoundConfig, secure: bool
                          ) -> Message:
        """Distributed DP: the site's noised vector, masked by SecAgg+ (weight 1)."""
        from client import secagg
        from client.distributed_round import release, withheld
        from client.dp import RoundRefused, site_privacy
        from client.privacy import LedgerError
        from client.privacy_guard import (
            check_acknowledged,
            ledger_error_reply,
            replayed_release,
        )
        from client.site import initial_state
        from common.protocol import CLASS_COUNTS_TASK

        cfg, site = setup_site(context)
        if not secure or cfg.dp != "distributed":
            reason = ("distributed DP releases noised sums only through secure aggregation"
                      if not secure else f"the site runs with --dp {cfg.dp}, the round asks "
                      "for distributed DP")
            return Message(Error(code=CLIENT_APP_RAISED_EXCEPTION, reason=reason),
                           reply_to=msg)
        received = secagg.received_arrays(msg.content)
        setup = state = None
        if rc.task != CLASS_COUNTS_TASK:
            try:
                setup = ConsortiumSetup.stored(context.state, rc.setup_digest)
            except SetupMissing as exc:
                return setup_missing_reply(msg, exc)
            state = secagg.as_state(received, initial_state(setup, cfg))
        try:
            privacy = site_privacy(site.name, site.train.n, dict(context.node_config), cfg)
            assert privacy is not None
            config = secagg.round_config_record(msg.content)
            check_acknowledged(privacy, site.name, config)
            out = replayed_release(privacy, rc, config, received, lambda: release(
                site, rc, cfg, privacy, setup=setup, state=state,
                run_id=str(msg.metadata.run_id)))
        except LedgerError as exc:
            return ledger_error_reply(msg, exc)
        except RoundRefused as exc:
            # Weight 0 and zeros of the release's shapes: the sum is unchanged.
            zeros = withheld(rc, received, site.train.schema.n_classes)
            return Message(content=secagg.with_masked_update(refusal(site.name, str(exc)),
                                                             zeros, 0), reply_to=msg)
        metrics = SiteMetrics(num_examples=1, epsilon=out.epsilon, delta=out.delta)
        content = RecordDict({METRICS: metrics.to_record(), SITE: site_record(site.name)})
        return Message(content=secagg.with_masked_update(content, out.vector, 1), reply_to=msg)

    return app


# Flower's code for an error raised by a ClientApp (flwr.common.constant.ErrorCode).
CLIENT_APP_RAISED_EXCEPTION = 2


def setup_missing_reply(msg: Message, exc: SetupMissing) -> Message:
    """An error reply the coordinator answers by sending the setup again. Returned, not
    raised: an exception escaping a ClientApp stops a deployed SuperNode (Flower's exit
    code 800), and the site would leave the federation instead of catching up."""
    return Message(Error(code=CLIENT_APP_RAISED_EXCEPTION, reason=str(exc)), reply_to=msg)


app = build_client_app()
