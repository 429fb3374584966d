"""Power of the per-class tests of ``kdhub compare``: detectable effects and seeds needed, against
published reference values, and the report's power section on a fixed table."""

from __future__ import annotations

import math

import pytest
from scipy.stats import t as student_t

from kdhub.cli import main
from kdhub_analysis.compare import Comparison, compare_tables
from kdhub_analysis.power import class_power, detectable_effect, power_lines, power_table, seeds_needed, t_power


def test_power_of_a_paired_t_test_matches_the_reference_value():
    # one-sample/paired t-test, effect = 1 sd, n = 10 pairs, alpha 0.05 two-sided: power 0.8031 (G*Power 3.1:
    # 0.8030969; Cohen 1988, table 2.3.5 for d = 1.0 at n = 10 gives 0.80)
    assert t_power(1.0, 1.0 / math.sqrt(10), 9) == pytest.approx(0.8030969, abs=1e-6)
    assert t_power(-1.0, 1.0 / math.sqrt(10), 9) == pytest.approx(0.8030969, abs=1e-6)  # two-sided
    assert t_power(0.0, 1.0, 5) == pytest.approx(0.05)  # no effect: the test's level
    assert math.isnan(t_power(1.0, 0.0, 5))
    assert math.isnan(t_power(1.0, 1.0, 0))


def test_seeds_needed_matches_the_reference_value():
    # effect of half a sd at alpha 0.05 and power 0.8: 34 pairs (G*Power 3.1: 34, actual power 0.8078;
    # 33 pairs give 0.7954)
    assert seeds_needed(0.5, 1.0) == 34
    assert seeds_needed(-1.5, 3.0) == 34  # only the ratio effect / sd and the sign-free size count
    assert t_power(0.5, 1 / math.sqrt(34), 33) == pytest.approx(0.8078, abs=1e-4)
    assert t_power(0.5, 1 / math.sqrt(33), 32) == pytest.approx(0.7954, abs=1e-4)
    assert seeds_needed(2.0, 1.0) == 5
    assert seeds_needed(1e-4, 1.0) is None  # beyond 10,000 seeds
    assert seeds_needed(0.0, 1.0) is None
    assert seeds_needed(1.0, 0.0) is None
    assert seeds_needed(1.0, math.nan) is None


def test_detectable_effect_inverts_the_power():
    se = 1.0 / math.sqrt(10)
    effect = detectable_effect(se, 9)
    assert t_power(effect, se, 9) == pytest.approx(0.8, abs=1e-6)
    # hand check with the usual approximation (t_{0.975, 9} + t_{0.8, 9}) * se = (2.2622 + 0.8834) / sqrt(10)
    # = 0.9947; the exact noncentral-t value is 0.9960
    approximation = (student_t.ppf(0.975, 9) + student_t.ppf(0.8, 9)) * se
    assert approximation == pytest.approx(0.9947, abs=1e-4)
    assert effect == pytest.approx(0.9960, abs=1e-4)
    assert detectable_effect(2 * se, 9) == pytest.approx(2 * effect)  # in the unit of se
    assert detectable_effect(se, 9, alpha=0.005) > effect  # a stricter level asks for more
    assert detectable_effect(se, 9, power=0.9) > effect
    assert math.isnan(detectable_effect(0.0, 9))
    assert math.isnan(detectable_effect(se, math.nan))
    with pytest.raises(ValueError, match="power"):
        detectable_effect(se, 9, power=1.0)


# the report's section on a fixed table: 3 classes, 4 seeds, paired
BASE = [[80.0, 90.0, 70.0], [81.0, 90.0, 71.0], [79.0, 91.0, 70.0], [80.0, 89.0, 69.0]]
RUN = [[78.0, 90.5, 70.0], [79.5, 90.0, 72.0], [77.0, 91.5, 69.0], [78.5, 90.0, 69.0]]


def fixed() -> Comparison:
    return compare_tables(BASE, RUN, names=["a", "b", "c"], seeds_baseline=[0, 1, 2, 3], seeds_run=[0, 1, 2, 3])


def test_class_power_on_a_fixed_table():
    comparison = fixed()
    rows = class_power(comparison)
    # class a: differences -2, -1.5, -2, -1.5 -> mean -1.75, sd 0.2887, se 0.1443, df 3
    sd = math.sqrt(sum((d + 1.75) ** 2 for d in (-2, -1.5, -2, -1.5)) / 3)
    assert rows[0].delta == pytest.approx(-1.75)
    assert rows[0].sd == pytest.approx(sd)
    assert rows[0].detectable == pytest.approx(detectable_effect(sd / 2, 3))
    assert rows[0].detectable_corrected == pytest.approx(detectable_effect(sd / 2, 3, alpha=0.05 / 3))
    assert rows[0].seeds_for_delta == seeds_needed(-1.75, sd)
    table = power_table(comparison)
    assert table["class"] == [0, 1, 2]
    assert table["detectable"][0] == pytest.approx(rows[0].detectable)
    assert all(v == -1 or v >= 2 for v in table["seeds_for_delta"])


def test_report_has_the_power_section():
    comparison = fixed()
    lines = power_lines(comparison)
    assert lines[0].startswith("power (paired t-test, 4 seed pairs, α = 0.05, power 0.8)")
    text = comparison.report()
    assert "detectable |ΔACC| with these seeds" in text
    assert "\n".join(lines) in text
    # class b moved by +0.5 with sd 0.58: below what 4 seeds can detect
    b = class_power(comparison)[1]
    assert abs(b.delta) < b.detectable
    assert "classes changed by less" in lines[-1]
    single = compare_tables([BASE[0]], [RUN[0]])  # one run a side: no test, no power section
    assert power_lines(single) == []
    assert "power (" not in single.report()


def test_cli_power_out_of_range_is_one_line_exit_2(capsys, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["compare", "-b", "0" * 32, "1" * 32, "--power", "1.5", "--no-log", "--tracking-uri", uri]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "power: 1.5 is outside (0, 1)" in err
    assert "\n" not in err
