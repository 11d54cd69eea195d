"""The contract's checks of registration and options: the entry point registers the type; a good
config loads; a misspelt or a missing key is refused with its field path."""

from __future__ import annotations

from typing import Any

import pytest

from cxbridge.errors import ConfigError
from cxbridge.plugins import PluginManager
from cxbridge.testing.bridge import make_destination
from cxbridge.testing.contract._base import ContractBase

__all__ = ["OptionsContract"]


class OptionsContract(ContractBase):
    # -- registration and options ----------------------------------------------------------------

    def test_registers_through_its_entry_point(self) -> None:
        if self.plugin is not None and self.entry_point is None:
            pytest.skip(
                "this class tests `plugin` directly; set entry_point = NAME to also check the "
                "installed entry point"
            )
        manager = PluginManager(allow=[self._entry_point])
        manager.load_entrypoints()
        assert not manager.failures, f"the plugin failed to load: {manager.failures}"
        registered = manager.destination_types.get(self.destination_type)
        assert registered is not None, (
            f"no plugin registered destination type {self.destination_type!r} through the entry "
            f'point {self._entry_point!r}: add `{self._entry_point} = "your_module"` under '
            "[project.entry-points.cxbridge] and call register() in register_destinations"
        )
        assert registered.plugin == self._entry_point

    def test_options_accept_a_good_config(self, plugins: PluginManager, target: Any) -> None:
        destination = self._destination(plugins, target)
        assert destination.type == self.destination_type

    def test_options_refuse_a_misspelt_key(self, plugins: PluginManager, target: Any) -> None:
        good = self.options(target)
        key = next(iter(good), "url")
        typo = key + key[-1]
        with pytest.raises(ConfigError) as refused:
            self._destination(plugins, target, **{typo: good.get(key, "x")})
            pytest.fail(
                f"the options model accepted the misspelt key {typo!r}: give it "
                "model_config = ConfigDict(extra='forbid') so a typo is an error at load"
            )
        messages = [p.message for p in refused.value.problems]
        assert any(f"dest.{typo}" in m for m in messages), (
            f"the problem does not name the field path destinations.dest.{typo}: {messages}"
        )

    def test_options_refuse_missing_required_keys(
        self, plugins: PluginManager, target: Any
    ) -> None:
        model = plugins.destination_types[self.destination_type].options
        required = [
            field.alias or name for name, field in model.model_fields.items() if field.is_required()
        ]
        if not required:
            pytest.skip("the options model has no required key, so none can be missing")
        good = self.options(target)
        for key in required:
            config = {k: v for k, v in good.items() if k != key}
            with pytest.raises(ConfigError) as refused:
                make_destination(self.destination_type, config, plugins=plugins, events=self.events)
            messages = [p.message for p in refused.value.problems]
            assert any(f"dest.{key}" in m for m in messages), (
                f"a config without {key!r} is refused, but no problem names the field: {messages}"
            )
