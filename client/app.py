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
from common.packed_arrays import packed_transport
from common.protocol import (
    ARRAYS,
    CONFIG,
    METRICS,
    QUERY_KIND,
    SITE,
    TRAIN_TASK,
    RoundConfig,
    SiteMetrics,
    refusal,
    site_record,
    to_array,
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
    # Outermost: the handlers and the other mods see the weights unpacked.
    app = ClientApp(mods=[packed_transport, *mods])

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
        private = cfg.dp in PRIVATE_DP_MODES
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
        if rc.noise_plan is not None and (rc.task != TRAIN_TASK
                                          or not trains_by_dp_sgd(setup_site(context)[0])):
            return distributed_reply(msg, context, rc, secure)
        try:
            setup = ConsortiumSetup.stored(context.state, rc.setup_digest)
        except SetupMissing as exc:
            return setup_missing_reply(msg, exc)
        cfg, site = setup_site(context)
        if cfg.dp == "distributed":
            return Message(Error(code=CLIENT_APP_RAISED_EXCEPTION, reason=(
                "the site runs with --dp distributed: it trains only in rounds with a noise "
                "plan")), reply_to=msg)
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
        if cfg.dp in PRIVATE_DP_MODES:
            return Message(Error(code=CLIENT_APP_RAISED_EXCEPTION, reason=(
                f"the site runs with --dp {cfg.dp}: its validation counts leave it only as a "
                "noised release")), reply_to=msg)
        metrics = evaluate_round(site, msg.content[ARRAYS].to_torch_state_dict(), setup, cfg)
        content = RecordDict({METRICS: metrics.to_record(), SITE: site_record(site.name)})
        return Message(content=content, reply_to=msg)

    def distributed_reply(msg: Message, context: Context, rc: RoundConfig, secure: bool
                          ) -> Message:
        """A noised release: under distributed DP the site's share, masked by SecAgg+
        (weight 1); under local DP (class counts, validation counts) the site's own full
        noise, sent as it is."""
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
        from common.protocol import CLASS_COUNTS_TASK, VALIDATE_TASK

        cfg, site = setup_site(context)
        reason = release_refusal(cfg.dp, rc, secure)
        if reason is not None:
            return Message(Error(code=CLIENT_APP_RAISED_EXCEPTION, reason=reason),
                           reply_to=msg)
        received = (secagg.received_arrays(msg.content) if secure
                    else [a.numpy() for a in msg.content[ARRAYS].values()])
        setup = state = None
        if rc.task != CLASS_COUNTS_TASK:
            try:
                setup = ConsortiumSetup.stored(context.state, rc.setup_digest)
            except SetupMissing as exc:
                return setup_missing_reply(msg, exc)
        if rc.task in (TRAIN_TASK, VALIDATE_TASK):  # a release of the model sent
            state = secagg.as_state(received, initial_state(setup, cfg))
        try:
            privacy = site_privacy(site.name, site.train.n, dict(context.node_config), cfg)
            assert privacy is not None
            config = (secagg.round_config_record(msg.content) if secure
                      else msg.content[CONFIG])
            check_acknowledged(privacy, site.name, config)
            out = replayed_release(privacy, rc, config, received, lambda: release(
                site, rc, cfg, privacy, setup=setup, state=state,
                run_id=str(msg.metadata.run_id)))
        except LedgerError as exc:
            return ledger_error_reply(msg, exc)
        except RoundRefused as exc:
            if not secure:
                return Message(content=refusal(site.name, str(exc)), reply_to=msg)
            # Weight 0 and zeros of the release's shapes: the sum is unchanged.
            zeros = withheld(rc, received, site.train.schema.n_classes)
            return Message(content=secagg.with_masked_update(refusal(site.name, str(exc)),
                                                             zeros, 0), reply_to=msg)
        metrics = SiteMetrics(num_examples=1, epsilon=out.epsilon, delta=out.delta)
        content = RecordDict({METRICS: metrics.to_record(), SITE: site_record(site.name)})
        if not secure:
            content[ARRAYS] = ArrayRecord({f"release-{i}": to_array(v)
                                           for i, v in enumerate(out.vector)})
            return Message(content=content, reply_to=msg)
        return Message(content=secagg.with_masked_update(content, out.vector, 1), reply_to=msg)

    return app


# Flower's code for an error raised by a ClientApp (flwr.common.constant.ErrorCode).
CLIENT_APP_RAISED_EXCEPTION = 2
# DP modes in which a site sends no per-site value in clear (names only at describe).
PRIVATE_DP_MODES = ("distributed", "local")


def trains_by_dp_sgd(cfg: RunConfig) -> bool:
    """Local DP with a model other than the class centroids: each round is DP-SGD at the
    site (:mod:`client.dp`), not a noised sum."""
    from common.centroid import CENTROID_KIND

    return cfg.dp == "local" and cfg.model.kind != CENTROID_KIND


def release_refusal(dp: str, rc: RoundConfig, secure: bool) -> str | None:
    """Why the site will not make the noised release ``rc`` asks for, or None.

    Distributed DP sends its share only through secure aggregation. Local DP sends its
    releases in clear, so each must carry the full noise on its own: a plan whose shares
    are sized for more than one site is refused (a coordinator asking for less).
    """
    plan = rc.noise_plan
    assert plan is not None
    if dp == "distributed":
        return None if secure else ("distributed DP releases noised sums only through "
                                    "secure aggregation")
    if dp == "local":
        if secure:
            return "local DP sends its noised counts as they are, not through SecAgg+"
        if plan.min_sites != 1:
            return (f"local DP: the noise plan sizes shares for {plan.min_sites} sites; a "
                    "release in clear must carry the full noise (1)")
        return None
    return f"the site runs with --dp {dp}, the round asks for a noised release"


def setup_missing_reply(msg: Message, exc: SetupMissing) -> Message:
    """An error reply the coordinator answers by sending the setup again. Returned, not
    raised: an exception escaping a ClientApp stops a deployed SuperNode (Flower's exit
    code 800), and the site would leave the federation instead of catching up."""
    return Message(Error(code=CLIENT_APP_RAISED_EXCEPTION, reason=str(exc)), reply_to=msg)


app = build_client_app()
