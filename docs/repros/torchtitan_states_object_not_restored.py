"""torchtitan's CheckpointManager does not restore a top-level non-tensor value of ``states``.

``states`` is "the states that need to be saved, other than the previous 4 components"
(Dict[str, Any]). A value that is neither a tensor nor a Stateful (an int here) is saved,
but ``load()`` loads into a shallow copy of ``states`` (``_states_to_load`` /
``_flattened_model_states_sd``) and never writes it back: the manager's ``states`` (and the
caller's dict) keep the old value, and ``load()`` returns True. The tensor beside it, loaded in
place, is restored; ``dcp.load`` on the same checkpoint restores both. The same copy drops
an object inside a top-level list, and the loaded tensor ``dcp.load`` puts in place of a
meta-device destination (the manager leaves the meta tensor and raises nothing).

One process, gloo on a file store (no network). torchtitan 0.3.0, torch 2.13.
"""

import tempfile

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.stateful import Stateful
from torchtitan.components.checkpoint import CheckpointManager


class Empty(Stateful):
    def state_dict(self):
        return {}

    def load_state_dict(self, state_dict):
        pass


def manager(folder, states):
    config = CheckpointManager.Config(enable=True, folder="ckpt", interval=1)
    return CheckpointManager(
        config,
        dataloader=None,
        model_parts=[],
        optimizers=Empty(),
        lr_schedulers=Empty(),
        states=states,
        sd_adapter=None,
        base_folder=folder,
    )


folder = tempfile.mkdtemp()
dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=0, world_size=1)

saving = manager(folder, {"step": 7, "w": torch.arange(3.0), "layers": [torch.ones(2), ("cfg", 3)]})
saving.save(curr_step=1)
saving.close()


def blank():
    return {"step": 0, "w": torch.zeros(3), "layers": [torch.zeros(2), None]}


def show(who, state):
    print(
        f"{who}: step = {state['step']}, w = {state['w'].tolist()}, layers[1] = {state['layers'][1]}"
    )


states = blank()
loading = manager(folder, states)
print("CheckpointManager.load() returned", loading.load())
show("CheckpointManager.load", loading.states)
loading.close()

plain = blank()
dcp.load(plain, checkpoint_id=f"{folder}/ckpt/step-1")
show("dcp.load of the same step-1", plain)

meta = {"w": torch.empty(3, device="meta")}
manager(folder, meta).load()
print("CheckpointManager.load into a meta tensor: w =", meta["w"])
meta = {"w": torch.empty(3, device="meta")}
dcp.load(meta, checkpoint_id=f"{folder}/ckpt/step-1")
print("dcp.load into a meta tensor: w =", meta["w"])
dist.destroy_process_group()
