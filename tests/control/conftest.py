import pytest

from helpers.control import dataset as control_data


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A toy conditioning dataset of 12 rows, written once per test module."""
    return control_data.write_dataset(tmp_path_factory.mktemp("control") / "data", count=12, progress=False)
