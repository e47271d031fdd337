import pytest

from torchslim.errors import ConfigError
from torchslim.targets import resolve_targets

NAMES = ["conv1", "layer1.0.conv1", "layer1.0.conv2", "fc"]


def test_first_match_wins_and_null_skips():
    m = resolve_targets(NAMES, {"layer1.0.conv2": None, "re:layer1\\..*": {"s": 1}, "re:.*": {"s": 2}})
    assert m["layer1.0.conv2"].skip
    assert m["layer1.0.conv1"].value == {"s": 1} and m["layer1.0.conv1"].key == "re:layer1\\..*"
    assert m["conv1"].value == {"s": 2} and m["fc"].value == {"s": 2}


def test_regex_is_fullmatch():
    assert set(resolve_targets(NAMES, {"re:conv1": {}})) == {"conv1"}
    with pytest.raises(ConfigError, match="targets.re:conv: matches no layer"):
        resolve_targets(NAMES, {"re:conv": {}})


def test_typos_and_bad_regexes_are_all_reported():
    with pytest.raises(ConfigError) as exc:
        resolve_targets(NAMES, {"fc2": None, "re:(": {}})
    assert len(exc.value.issues) == 1 and "invalid regular expression" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        resolve_targets(NAMES, {"fc2": None, "re:nope.*": {}, "fc": {}})
    paths = [i.path for i in exc.value.issues]
    assert paths == ["targets.fc2", "targets.re:nope.*"] and "candidate layers: conv1" in str(exc.value)


def test_an_optional_regex_may_match_no_layer_but_a_plain_one_may_not():
    from torchslim.errors import ConfigError
    from torchslim.targets import resolve_targets

    found = resolve_targets(["fc1", "fc2"], {"re?:gone.*": {"bits": 4}, "re?:fc1": {"bits": 2}})
    assert found["fc1"].value == {"bits": 2} and "fc2" not in found
    with pytest.raises(ConfigError, match="matches no layer"):
        resolve_targets(["fc1"], {"re:gone.*": {"bits": 4}})
