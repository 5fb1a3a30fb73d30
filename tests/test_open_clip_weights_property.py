"""Property tests (hypothesis) for the checkpoints an `open_clip:` encoder reads. The generator makes new
cases of one class, a checkpoint as a user has it:

- spelled any way OpenCLIP and its users write one (a full CLIP state dict, the image tower's alone,
  DDP's `module.` prefix, a training checkpoint's {"state_dict": ...}, .safetensors or a torch .pt),
  it gives exactly the features of the same weights;
- damaged (a tensor missing, a tensor of another shape, a truncated file), it is one ArtcapError line,
  never a traceback and never an encoder with some random weights.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from artcap.encoders import create_encoder
from artcap.errors import ArtcapError

open_clip = pytest.importorskip("open_clip")

NAME = "open_clip:artcap-prop-vit"
CONFIG = {"embed_dim": 16, "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
          "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16}}
IMAGES = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
SPELLINGS = ("full", "visual-only", "module-prefix", "training-checkpoint")
DAMAGES = ("none", "missing tensor", "other shape", "truncated")


@pytest.fixture(scope="module")
def reference():
    """(full CLIP state dict, the features its image tower gives)."""
    folder = Path(tempfile.mkdtemp(prefix="artcap-prop-configs-"))
    (folder / "artcap-prop-vit.json").write_text(json.dumps(CONFIG))
    open_clip.add_model_config(folder)
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in open_clip.create_model("artcap-prop-vit").state_dict().items()}
    path = folder / "reference.safetensors"
    save_file(state, path)
    with torch.inference_mode():
        return state, create_encoder(NAME, weights=path)(IMAGES)


def spelled(state: dict, spelling: str) -> dict:
    if spelling == "visual-only":
        return {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    if spelling == "module-prefix":
        return {f"module.{k}": v for k, v in state.items()}
    return dict(state)


def damaged(state: dict, damage: str, data) -> dict:
    visual = sorted(k for k in state if "visual" in k or not any("visual" in j for j in state))
    key = data.draw(st.sampled_from(visual), label="tensor")
    if damage == "missing tensor":
        state.pop(key)
    elif damage == "other shape":
        tensor = state[key]
        if tensor.dim() == 0:
            tensor = tensor.reshape(1)
        dim = data.draw(st.integers(0, tensor.dim() - 1), label="dim")
        grown = list(tensor.shape)
        grown[dim] += data.draw(st.integers(1, 3), label="by")
        state[key] = torch.zeros(grown)
    return state


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), spelling=st.sampled_from(SPELLINGS), damage=st.sampled_from(DAMAGES),
       suffix=st.sampled_from([".safetensors", ".pt"]))
def test_a_checkpoint_gives_the_same_features_or_one_line(reference, tmp_path, data, spelling, damage, suffix):
    state, expected = reference
    if spelling == "training-checkpoint":
        suffix = ".pt"  # {"epoch": ..., "state_dict": ...} is a torch pickle
    weights = damaged(spelled(state, spelling), damage, data)
    path = tmp_path / f"weights-{spelling}-{damage.replace(' ', '-')}{suffix}"
    path.unlink(missing_ok=True)
    if suffix == ".safetensors":
        save_file(weights, path)
    else:
        torch.save({"epoch": 3, "state_dict": weights} if spelling == "training-checkpoint" else weights, path)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: data.draw(st.integers(0, path.stat().st_size - 1), label="bytes")])

    if damage == "none":
        with torch.inference_mode():
            got = create_encoder(NAME, weights=path)(IMAGES)
        torch.testing.assert_close(got.grid, expected.grid)
        return
    with pytest.raises(ArtcapError) as caught:
        create_encoder(NAME, weights=path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message, message


@pytest.mark.parametrize("shape", [(18, 32), (19, 32), (17, 33)])
def test_position_embeddings_of_another_length_or_width_are_one_line(reference, tmp_path, shape):
    """Found by hand beside the generator: a length that is no square grid plus a class token used to reach
    the position-embedding resampling as a raw RuntimeError."""
    state = dict(reference[0])
    state["visual.positional_embedding"] = torch.zeros(shape)
    path = tmp_path / "weights.safetensors"
    save_file(state, path)
    with pytest.raises(ArtcapError, match=r"weights.safetensors: not weights of encoder open_clip:artcap-prop-vit"):
        create_encoder(NAME, weights=path)
