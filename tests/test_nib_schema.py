"""The migrations build exactly the schema the code declares, on both backends."""

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from pdsno.nib.engine import current_revision, head_revision, upgrade
from pdsno.nib.schema import metadata


def test_migrated_schema_matches_the_declared_tables(nib_engine):
    with nib_engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), metadata)
    assert differences == []


def test_upgrade_twice_changes_nothing(nib_engine):
    tables_before = set(inspect(nib_engine).get_table_names())
    assert upgrade(nib_engine) == head_revision()
    assert current_revision(nib_engine) == head_revision()
    assert set(inspect(nib_engine).get_table_names()) == tables_before
    with nib_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM audit_head")).scalar() == 1


def test_foreign_keys_are_enforced(nib_engine):
    import pytest
    from sqlalchemy.exc import IntegrityError

    from pdsno.clock import utcnow
    from pdsno.nib.schema import device_configs

    with pytest.raises(IntegrityError), nib_engine.begin() as conn:
        conn.execute(
            device_configs.insert().values(
                device_id="no-such-device",
                config_version=1,
                config=[],
                config_hash="0" * 64,
                rollback_config=[],
                applied_by="test",
                created_at=utcnow(),
            )
        )
