"""Which arguments a child is started with, given how its memory was estimated."""

from __future__ import annotations

from llmd.models.catalog import ModelSpec
from llmd.models.model import Model
from llmd.models.prepare import launch_spec


def model(source: str, args: tuple[str, ...] = ("--ctx-size", "1024")) -> Model:
    return Model(spec=ModelSpec(name="m", path="/m.gguf", args=args), need={"host": 700},
                 need_source=source)


def test_a_child_admitted_on_llama_fit_params_estimate_skips_its_own_fit():
    spec = launch_spec(model("llama-fit-params"))
    assert spec.args == ("--ctx-size", "1024", "--fit", "off")
    assert spec.child_args()[-2:] == ("--fit", "off")


def test_a_child_without_llama_cpp_estimate_still_fits_itself():
    for source in ("gguf", "none", ""):
        m = model(source)
        assert launch_spec(m) is m.spec


def test_the_operators_own_fit_settings_are_kept():
    for args in (("--fit", "on"), ("-fit", "on"), ("--fit-target", "2048"), ("-fitc", "8192")):
        m = model("llama-fit-params", args=args)
        assert launch_spec(m).args == args
