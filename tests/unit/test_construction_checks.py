"""Bad settings fail where they are written: RuntimeOptions at construction, providers at open/connect (no
database is touched), the CLI's --queue-prefix at parsing."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from duroxide_celery import PostgresProvider, RuntimeOptions, SqliteProvider, TagFilter
from duroxide_celery.cli import main


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"worker_node_id": "has space"},
            "RuntimeOptions.worker_node_id: worker node id 'has space' may contain only letters, digits and - _ . @",
        ),
        ({"worker_node_id": "n" * 201}, "RuntimeOptions.worker_node_id: a worker node id is at most 200 characters"),
        ({"worker_node_id": ""}, "RuntimeOptions.worker_node_id: a worker node id must be a non-empty string"),
        ({"worker_tag_filter": "gpu"}, "RuntimeOptions.worker_tag_filter: invalid worker_tag_filter 'gpu': use"),
        ({"queue_prefix": ""}, "RuntimeOptions.queue_prefix: queue prefix '' must be non-empty words of letters"),
        ({"queue_prefix": "a b"}, "RuntimeOptions.queue_prefix: queue prefix 'a b' must be non-empty words"),
        ({"queue_prefix": "a..b"}, "RuntimeOptions.queue_prefix: queue prefix 'a..b' must be non-empty words"),
        ({"queue_prefix": "p" * 41}, "RuntimeOptions.queue_prefix: queue prefix is 41 characters; the limit is 40"),
    ],
)
def test_runtime_options_refuse_bad_values_at_construction(options, message):
    with pytest.raises(ValueError) as info:
        RuntimeOptions(**options)
    assert str(info.value).startswith(message)


def test_runtime_options_take_good_values():
    options = RuntimeOptions(
        worker_node_id="gpu-1@host.example",
        worker_tag_filter=TagFilter.tags(["gpu"]),
        queue_prefix="orders.eu-1",
    )
    assert options.prefix == "orders.eu-1"
    with pytest.raises(TypeError, match="^RuntimeOptions.queue_prefix must be a str, got int$"):
        RuntimeOptions(queue_prefix=5)  # type: ignore[arg-type]


def test_cli_queue_prefix_follows_the_same_rule():
    result = CliRunner().invoke(main, ["--queue-prefix", "a b", "list"])
    assert result.exit_code == 2
    assert "Invalid value for --queue-prefix: queue prefix 'a b' must be non-empty words" in result.output


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://u@h/x", "PostgresProvider expected a postgresql:// URL, got 'mysql://u@h/x'"),
        ("sqlite:///x.db", "PostgresProvider expected a postgresql:// URL, got 'sqlite:///x.db'"),
        ("notaurl", "PostgresProvider: 'notaurl' is not a database URL: expected postgresql://user:password@host"),
        (
            "postgresql://u:s3cret@h:port/x",
            "PostgresProvider: 'postgresql://u:***@h:port/x' is not a database URL",
        ),
        ("mysql://u:s3cret@h/x", "PostgresProvider expected a postgresql:// URL, got 'mysql://u:***@h/x'"),
    ],
)
def test_postgres_provider_refuses_other_urls_at_connect_without_showing_the_password(url, message):
    with pytest.raises(ValueError) as info:
        PostgresProvider.connect(url)
    assert str(info.value).startswith(message)
    assert "s3cret" not in str(info.value)


def test_postgres_provider_takes_postgres_urls():
    assert PostgresProvider.connect("postgres://u@h/x").url == "postgresql+psycopg://u@h/x"
    assert PostgresProvider.connect("postgresql+psycopg2://u@h/x").url == "postgresql+psycopg2://u@h/x"


def test_sqlite_provider_refuses_a_directory_at_open(tmp_path):
    for path in (str(tmp_path), f"sqlite:///{tmp_path}"):
        with pytest.raises(ValueError, match="^SqliteProvider.open: .* is a directory; give the database file's path$"):
            SqliteProvider.open(path)
