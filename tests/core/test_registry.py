import pytest
import torch
from pydantic import Field

import kdhub
from kdhub.registry.catalog import DuplicatePluginError, Registry


class Dummy(kdhub.Method):
    """A dummy method for registry tests."""

    name = "dummy"

    class Options(kdhub.Options):
        scale: float = Field(1.0, gt=0, description="a scale")

    def loss(self, out):
        return out.student_logits.sum(1) * self.options.scale


class OtherDummy(Dummy):
    """Another class under the same name."""


def test_list_get_create_on_the_builtins():
    assert "kd" in kdhub.list_plugins("method")
    assert kdhub.list_plugins("method", "k?") == ["kd"]
    assert set(kdhub.list_plugins("method", "*kd*")) >= {"kd", "dkd"}
    cls = kdhub.get_plugin("method", "kd")
    assert cls.Options.model_fields["temperature"].default == 4.0
    kd = kdhub.create("method", "kd", temperature=2.0)
    assert isinstance(kd, cls)
    assert kd.options.temperature == 2.0


def test_unknown_names_suggest_close_matches():
    with pytest.raises(kdhub.PluginNotFoundError, match="did you mean 'kd'"):
        kdhub.get_plugin("method", "kdd")
    with pytest.raises(kdhub.PluginNotFoundError, match="did you mean 'method'"):
        kdhub.list_plugins("methods")


def test_options_are_validated_with_the_path_and_plugin():
    with pytest.raises(kdhub.ConfigError) as err:
        kdhub.create("method", "kd", temperature=-1)
    assert "temperature" in str(err.value)
    assert "method 'kd'" in str(err.value)
    with pytest.raises(kdhub.ConfigError, match="did you mean 'temperature'"):
        kdhub.create("method", "kd", temprature=2)


def test_duplicate_names_are_an_error_naming_both_sources():
    registry = Registry()
    registry.add("method", Dummy, "dist-a", "1.0")
    registry.add("method", Dummy, "dist-a", "1.0")  # the same class again is harmless
    with pytest.raises(DuplicatePluginError) as err:
        registry.add("method", OtherDummy, "dist-b", "2.0")
    assert "dist-a 1.0" in str(err.value)
    assert "dist-b 2.0" in str(err.value)
    assert registry.get("method", "dummy") is Dummy


def test_register_checks_the_kind_and_name():
    registry = Registry()
    with pytest.raises(kdhub.KdhubError, match=r"not a kdhub\.Policy"):
        registry.add("policy", Dummy, "x")

    class Nameless(kdhub.Method):
        pass

    with pytest.raises(kdhub.KdhubError, match="without a name"):
        registry.add("method", Nameless, "x")


def test_variant_suffix_goes_to_the_variant_option():
    class Family(kdhub.Model):
        """A model family."""

        name = "fam"

        class Options(kdhub.Options):
            variant: str = Field("a", description="which member")

        def build(self, num_classes, in_channels, image_size):
            return torch.nn.Linear(1, num_classes)

    registry = Registry()
    registry.add("model", Family, "x")
    assert registry.create("model", "fam:big").options.variant == "big"
    with pytest.raises(kdhub.ConfigError, match="takes no ':variant'"):
        registry.add("method", Dummy, "x") and registry.options("method", "dummy:x")


def test_a_class_missing_a_required_method_is_refused_with_its_names():
    class NoLoss(kdhub.Method):
        """A method that forgot its loss."""

        name = "no_loss"

    class HalfMetric(kdhub.Metric):
        """A metric with update but no compute."""

        name = "half"

        def update(self, batch):
            pass

    registry = Registry()
    with pytest.raises(kdhub.KdhubError, match=r"method 'no_loss' \(NoLoss\), which does not implement loss\(\)"):
        registry.add("method", NoLoss, "x")
    with pytest.raises(kdhub.KdhubError, match=r"does not implement compute\(\)"):
        registry.add("metric", HalfMetric, "x")
    with pytest.raises(TypeError, match="abstract"):
        NoLoss()
