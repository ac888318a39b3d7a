"""The site's side of secure aggregation (Flower SecAgg+, see :mod:`server.secagg`).

The coordinator drives SecAgg+ through Flower's legacy workflow, so a secure training
round reaches the site in Flower's legacy "fit" format and goes through
``secaggplus_mod``, which masks the site's reply before it leaves. The site replies with
its update (new weights minus the received ones) weighted by its training patients; a
site that declines the round contributes weight 0, so the sum is unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common.recorddict_compat import arrayrecord_to_parameters, fitres_to_recorddict

FIT_PARAMETERS = "fitins.parameters"
FIT_CONFIG = "fitins.config"


def secagg_when_requested(msg: Message, context: Context, call_next: ClientAppCallable
                          ) -> Message:
    """Run Flower's SecAgg+ mod on training messages that belong to the protocol only."""
    if (msg.metadata.message_type == MessageType.TRAIN
            and RECORD_KEY_CONFIGS in msg.content.config_records):
        from flwr.client.mod import secaggplus_mod

        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def is_secure_round(content: RecordDict) -> bool:
    return FIT_PARAMETERS in content.array_records


def round_config_record(content: RecordDict) -> ConfigRecord:
    return content.config_records[FIT_CONFIG]


def received_arrays(content: RecordDict) -> list[np.ndarray]:
    """The arrays of a secure round's message, in the order they were sent."""
    return parameters_to_ndarrays(arrayrecord_to_parameters(content[FIT_PARAMETERS],
                                                            keep_input=True))


def received_state(content: RecordDict, template: dict[str, Any]) -> dict[str, Any]:
    """The global weights of a secure round, named and shaped like ``template``."""
    return as_state(received_arrays(content), template)


def as_state(arrays: list[np.ndarray], template: dict[str, Any]) -> dict[str, Any]:
    """``arrays`` named and shaped like ``template``.

    Legacy parameters are an unnamed list; both sides order it like the model's
    ``state_dict``, which the consortium schema and model config determine.
    """
    import torch

    if len(arrays) != len(template):
        raise ValueError(f"secure round: received {len(arrays)} weight tensors, the model "
                         f"has {len(template)}")
    state = {}
    for (name, ref), arr in zip(template.items(), arrays, strict=True):
        if tuple(arr.shape) != tuple(ref.shape):
            raise ValueError(f"secure round: weight {name!r} has shape {tuple(arr.shape)}, "
                             f"the model expects {tuple(ref.shape)}")
        state[name] = torch.from_numpy(np.array(arr, copy=True)).to(ref.dtype)
    return state


def with_masked_update(content: RecordDict, update: list[np.ndarray], num_examples: int
                       ) -> RecordDict:
    """``content`` plus the legacy fit result that ``secaggplus_mod`` masks and strips."""
    fitres = FitRes(status=Status(Code.OK, "ok"), parameters=ndarrays_to_parameters(update),
                    num_examples=num_examples, metrics={})
    for key, record in fitres_to_recorddict(fitres, keep_input=False).items():
        content[key] = record
    return content


def update_of(new: dict[str, Any], old: dict[str, Any]) -> list[np.ndarray]:
    """New minus received weights, as float arrays in ``state_dict`` order."""
    return [(new[k].detach().cpu().double() - old[k].detach().cpu().double()).numpy()
            for k in old]
