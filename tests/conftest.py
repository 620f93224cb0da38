"""Test-suite scheduling for parallel runs (pytest-xdist, `local/run_tests.sh` uses one worker per core).

Two rules, applied to the collected items (identically in every worker, as xdist requires):
- Tests that share a module- or session-scoped fixture of their module (a synthesised corpus, a
  pretrained model) form one `xdist_group`, so `--dist loadgroup` runs them in one worker and the
  fixture is built once. Tests with function-scoped fixtures only stay free to go anywhere.
- Slow tests run first, the groups holding the most slow tests before the others (a group is one
  unit of work for xdist, and a worker takes the next unit while its last two tests run, so a
  long group scheduled late ends up queued behind other slow tests in one worker while the other
  worker runs out of work); the many short tests then fill the gaps and the workers finish together.
Without xdist the grouping marks are inert and only the order changes. `pytest_configure` refuses
`--dist loadgroup` where pytest no longer reads the node ids xdist marks (pytest 9.2), which would
otherwise ignore every group without a word.
"""
from __future__ import annotations

import pytest


def _shared_fixture_group(item: pytest.Item) -> str | None:
    """The item's module name when it uses a module/session/package-scoped fixture defined there."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return None
    module_file = str(item.path)
    for name in info.names_closure:
        for fdef in info.name2fixturedefs.get(name, ()):
            if fdef.scope in ("module", "session", "package") and fdef.baseid and module_file.endswith(
                    fdef.baseid.split("::")[0]):
                return item.path.stem
    return None


@pytest.hookimpl(tryfirst=True)  # before xdist reads the group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    groups = []  # xdist's unit of work per item: its group, or the item alone
    for item in items:
        mark = item.get_closest_marker("xdist_group")
        name = (mark.kwargs.get("name", mark.args[0] if mark.args else "") if mark
                else _shared_fixture_group(item))
        if mark is None and name is not None:
            item.add_marker(pytest.mark.xdist_group(name))
        groups.append(str(name) if name is not None else item.nodeid)
    slow = [it.get_closest_marker("slow") is not None for it in items]
    slow_in_group: dict[str, int] = {}
    for g, s in zip(groups, slow):
        slow_in_group[g] = slow_in_group.get(g, 0) + s
    order = sorted(range(len(items)), key=lambda i: (not slow[i], -slow_in_group[groups[i]], i))
    items[:] = [items[i] for i in order]


def pytest_configure(config: pytest.Config) -> None:
    """Grouping that silently does nothing costs a full fixture rebuild per worker (measured: with
    pytest 9.2 and pytest-xdist 3.8 the 8-minute pretraining fixture of test_train_e2e ran in both
    workers in CI). xdist groups by appending "@group" to `item._nodeid`; pytest 9.2 derives node
    ids from elsewhere, so the suffix is lost. Stop with one line instead."""
    if getattr(config.option, "dist", None) != "loadgroup":
        return
    import inspect

    from _pytest.nodes import Node

    if "_nodeid" not in inspect.getsource(Node.nodeid.fget):
        import xdist

        raise pytest.UsageError(f"pytest {pytest.__version__} with pytest-xdist {xdist.__version__}: --dist loadgroup "
                                "would ignore the test groups (pytest no longer reads the node id xdist marks); "
                                "install the versions pinned in requirements.txt (local/install.sh --force true)")
