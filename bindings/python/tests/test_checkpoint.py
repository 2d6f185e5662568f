"""fluxion.save / fluxion.load: round trips of every dtype, metadata, files readable by the
safetensors package, model + optimiser state, clear errors on bad input."""
import numpy as np
import pytest

import fluxion as fx
from fluxion import nn, optim

rng = np.random.default_rng(2)


def arrays():
    return {
        "f32": rng.standard_normal((2, 3)).astype(np.float32),
        "f64": rng.standard_normal((4,)),
        "i32": np.arange(6, dtype=np.int32).reshape(3, 2),
        "i64": np.array([-5, 7], dtype=np.int64),
        "bool": np.array([[True, False]]),
        "scalar": np.array(2.5, dtype=np.float64),
    }


def test_roundtrip_every_dtype_and_metadata(tmp_path, no_leaks):
    path = tmp_path / "a.safetensors"
    src = arrays()
    fx.save(path, {k: fx.tensor(v) for k, v in src.items()}, {"epoch": "3", "note": "ü"})
    got, meta = fx.load(path, metadata=True)
    assert list(got) == list(src) or set(got) == set(src)
    for k, v in src.items():
        assert got[k].numpy().dtype == v.dtype, k
        np.testing.assert_array_equal(got[k].numpy(), v)
    assert meta == {"epoch": "3", "note": "ü"}
    np.testing.assert_array_equal(fx.load_tensor(path, "i32").numpy(), src["i32"])
    with pytest.raises(ValueError):
        fx.load_tensor(path, "nope")


def test_readable_by_safetensors_package(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "b.safetensors"
    src = arrays()
    fx.save(path, src)  # numpy arrays are accepted too
    back = st.load_file(str(path))
    for k, v in src.items():
        np.testing.assert_array_equal(back[k], v)
    # and the other way round
    path2 = tmp_path / "c.safetensors"
    st.save_file({"w": src["f32"], "n": src["i64"]}, str(path2), metadata={"by": "safetensors"})
    got, meta = fx.load(path2, metadata=True)
    np.testing.assert_array_equal(got["w"].numpy(), src["f32"])
    assert meta == {"by": "safetensors"}


def test_model_and_optimiser_state_roundtrip(tmp_path):
    fx.manual_seed(9)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    opt = optim.AdamW(model.parameters(), lr=0.01)
    x = fx.tensor(rng.standard_normal((8, 3)).astype(np.float32))
    y = fx.tensor(rng.integers(0, 2, 8))
    for _ in range(2):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    path = tmp_path / "ck.safetensors"
    fx.save(path, {**{"model." + k: v for k, v in model.state_dict().items()},
                   **{"optim." + k: v for k, v in opt.state_dict().items()}}, {"step": "2"})
    fx.manual_seed(100)
    model2 = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    opt2 = optim.AdamW(model2.parameters(), lr=0.5)
    ck = fx.load(path)
    model2.load_state_dict({k[6:]: v for k, v in ck.items() if k.startswith("model.")})
    opt2.load_state_dict({k[6:]: v for k, v in ck.items() if k.startswith("optim.")})
    for (k, a), (_, b) in zip(model.state_dict().items(), model2.state_dict().items()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=k)
    for (k, a), (_, b) in zip(opt.state_dict().items(), opt2.state_dict().items()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=k)


def test_bad_input_is_rejected(tmp_path):
    with pytest.raises(TypeError):
        fx.save(tmp_path / "x.safetensors", [fx.zeros(2)])
    with pytest.raises(TypeError):
        fx.save(tmp_path / "x.safetensors", {"a": fx.zeros(2)}, {"k": 3})
    with pytest.raises(ValueError):
        fx.save(tmp_path / "x.safetensors", {"__metadata__": fx.zeros(2)})
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ValueError):
        fx.load(bad)
    with pytest.raises(ValueError):
        fx.load(tmp_path / "missing.safetensors")
