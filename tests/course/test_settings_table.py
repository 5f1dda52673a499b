"""A notebook's SETTINGS table: the profile's column, the CI column where a row has one, the trainer's rows."""

import pytest

from helpers.core.errors import UsageError
from helpers.course.settings import column, fields_of
from helpers.dreambooth.trainer import TrainConfig

SETTINGS = {
    "max_train_steps": {"toy": 300, "sd15": 800, "ci": 2},
    "learning_rate": {"toy": 1e-4, "sd15": 5e-6},
    "samples": {"toy": 16, "sd15": 8, "ci": 2},
}


def test_a_column_is_the_profiles_and_ci_shrinks_only_the_rows_that_say_so():
    assert column(SETTINGS, "toy") == {"max_train_steps": 300, "learning_rate": 1e-4, "samples": 16}
    assert column(SETTINGS, "sd15", "ci") == {"max_train_steps": 2, "learning_rate": 5e-6, "samples": 2}


def test_a_missing_value_or_an_unknown_column_is_one_line():
    with pytest.raises(UsageError, match=r"^SETTINGS has no 'sd35' value for max_train_steps, learning_rate, samples"):
        column(SETTINGS, "sd35")
    with pytest.raises(UsageError, match=r"^SIZES must be None .* or \"ci\" \(got 'tiny'\)$"):
        column(SETTINGS, "toy", "tiny")


def test_the_trainers_rows_go_into_its_settings_as_they_are():
    values = column(SETTINGS, "toy")
    assert fields_of(TrainConfig, values) == {"max_train_steps": 300, "learning_rate": 1e-4}
    config = TrainConfig(output_dir="o", instance_data_dir="i", instance_prompt="p", **fields_of(TrainConfig, values))
    assert config.max_train_steps == 300 and config.learning_rate == 1e-4
