"""Check that rewritten presets resolve to the same runs as an old checkout's presets.

"One source of defaults": a preset's top level is its headline RMFlow, and its `compare` rows are differences
from it. Rewriting presets that way must not change what any row trains. This script resolves every preset with
the OLD code (so that it does not depend on later changes to the code) once against the OLD preset folder and once
against the NEW one, and checks, for every preset:

  (a) every `compare` method's config (seed 0, `rmflow.experiment.method_config`, as `rmflow.config.to_dict`) is
      identical old vs new, and so are the method names and their `from:`;
  (b) presets with a headline RMFlow row (the row named `rmflow`, else the one in HEADLINE below): the NEW top level
      (read_yaml + build_config, `compare` popped) equals the OLD headline row's config apart from `name`, `seed`
      and `eval.samplers`, and the NEW headline row has an empty `set`;
  (c) presets without a headline row: the top level (`compare` popped) is identical old vs new.

`rmflow.config.PRESET_DIR` is monkeypatched to the preset folder in use, so `base:` resolves within it.

Usage (the old checkout needs no venv of its own; its src/ goes first on the path):

    git -C /work/main worktree add /tmp/old_presets 1a9e2f4
    PYTHONPATH=/tmp/old_presets/src /work/main/.venv/bin/python benchmarks/check_presets.py \
        --old /tmp/old_presets --new /work/main/src/rmflow/configs
    git -C /work/main worktree remove --force /tmp/old_presets

Exit code 0 when everything matches, 1 on any difference (each one is printed with its keys).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from pathlib import Path

# presets whose headline RMFlow row is not named `rmflow` (the row their header comment calls the method)
HEADLINE = {
    "digits": "rmflow_lora",
    "digits-cpu": "rmflow_lora",
    "shapes": "rmflow_lora",
    "shapes-cpu": "rmflow_lora",
    "qm9-cpu-lean": "rmflow_bank_split50",
}
IGNORED_IN_B = ("name", "seed", "eval.samplers")
MISSING = "<missing>"


def diff(a, b, prefix: str = "") -> list[str]:
    """Dotted keys where the nested dicts a and b differ, as 'key: old -> new'."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            out += diff(a.get(k, MISSING), b.get(k, MISSING), f"{prefix}.{k}" if prefix else str(k))
        return out
    if a == b and type(a) is type(b):
        return []
    return [f"{prefix or '<root>'}: {a!r} -> {b!r}"]


def drop(d: dict, dotted: str) -> None:
    *path, last = dotted.split(".")
    for k in path:
        d = d.get(k, {})
    d.pop(last, None)


class Resolver:
    """Resolves presets of one folder with the (old) rmflow code on sys.path."""

    def __init__(self, preset_dir: Path):
        self.dir = preset_dir

    @contextlib.contextmanager
    def active(self):
        from rmflow import config
        saved = config.PRESET_DIR
        config.PRESET_DIR = self.dir
        try:
            yield
        finally:
            config.PRESET_DIR = saved

    def raw(self, preset: str) -> dict:
        from rmflow.config import read_yaml
        with self.active():
            return read_yaml(str(self.dir / f"{preset}.yaml"))

    def top(self, preset: str) -> dict:
        from rmflow.config import build_config, to_dict
        data = self.raw(preset)
        data.pop("compare", None)
        with self.active():
            return to_dict(build_config(data))

    def method(self, preset: str, method: str) -> dict:
        from rmflow.config import to_dict
        from rmflow.experiment import method_config
        data = self.raw(preset)
        with self.active():
            return to_dict(method_config(data, method, data["compare"][method], 0))


def headline_of(preset: str, compare: dict) -> str | None:
    name = HEADLINE.get(preset, "rmflow")
    return name if name in compare else None


def attempt(fn, *args):
    try:
        return fn(*args), None
    except Exception as e:  # noqa: BLE001 - a preset that fails to resolve is a difference, reported
        return None, f"{type(e).__name__}: {e}"


def check(old: Resolver, new: Resolver) -> int:
    old_names = {p.stem for p in old.dir.glob("*.yaml")}
    new_names = {p.stem for p in new.dir.glob("*.yaml")}
    problems, methods_checked = 0, 0

    def report(preset: str, what: str, lines: list[str]) -> None:
        nonlocal problems
        problems += 1
        print(f"  DIFF {preset}: {what}")
        for line in lines:
            print(f"       {line}")

    for preset in sorted(old_names | new_names):
        if preset not in old_names or preset not in new_names:
            report(preset, "preset only in the " + ("new" if preset in new_names else "old") + " folder", [])
            continue
        before = problems
        (old_raw, eo), (new_raw, en) = attempt(old.raw, preset), attempt(new.raw, preset)
        if eo or en:
            report(preset, "does not read", [f"old: {eo}", f"new: {en}"])
            continue
        old_cmp, new_cmp = old_raw.get("compare") or {}, new_raw.get("compare") or {}
        # (a) every compare method, old vs new
        if list(old_cmp) != list(new_cmp):
            report(preset, "compare methods differ", [f"old: {list(old_cmp)}", f"new: {list(new_cmp)}"])
        for method in [m for m in old_cmp if m in new_cmp]:
            methods_checked += 1
            if old_cmp[method].get("from") != new_cmp[method].get("from"):
                report(preset, f"compare.{method}.from differs",
                       [f"{old_cmp[method].get('from')!r} -> {new_cmp[method].get('from')!r}"])
            (a, ea), (b, eb) = attempt(old.method, preset, method), attempt(new.method, preset, method)
            if ea or eb:
                report(preset, f"compare.{method} does not resolve", [f"old: {ea}", f"new: {eb}"])
            elif d := diff(a, b):
                report(preset, f"compare.{method} resolves differently", d)
        # (b) / (c) the top level
        head = headline_of(preset, old_cmp)
        new_top, en = attempt(new.top, preset)
        if en:
            report(preset, "new top level does not resolve", [en])
            continue
        if head is not None:
            if new_cmp.get(head, {}).get("set"):
                report(preset, f"headline row compare.{head} still has a non-empty set",
                       [str(new_cmp[head]["set"])])
            want, ew = attempt(old.method, preset, head)
            if ew:
                report(preset, f"old headline compare.{head} does not resolve", [ew])
                continue
            for key in IGNORED_IN_B:
                drop(want, key)
                drop(new_top, key)
            if d := diff(want, new_top):
                report(preset, f"new top level != old headline compare.{head}", d)
            else:
                old_top, _ = attempt(old.top, preset)   # for the summary line: how far the old top level was
                for key in IGNORED_IN_B:
                    drop(old_top or {}, key)
                moved = len(diff(old_top, new_top)) if old_top else "?"
                how = f"top level = headline '{head}'" + (f" (old top level: {moved} key(s) away)" if moved
                                                           else " (as before)")
        else:
            old_top, eo = attempt(old.top, preset)
            if eo:
                report(preset, "old top level does not resolve", [eo])
                continue
            if d := diff(old_top, new_top):
                report(preset, "top level changed (no headline row)", d)
            how = "no headline row: top level unchanged"
        if problems == before:
            print(f"  ok   {preset:<14} {len(new_cmp):>2} method(s); {how}")
    print(f"\n{len(old_names | new_names)} presets, {methods_checked} compare methods checked, "
          f"{problems} difference(s)")
    return problems


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--old", required=True, type=Path, help="old checkout (its src/ is imported, its presets compared)")
    p.add_argument("--new", required=True, type=Path, help="folder of the new presets (*.yaml)")
    args = p.parse_args()
    old_root, new_dir = args.old.resolve(), args.new.resolve()
    old_src = old_root / "src"
    if str(old_src) not in sys.path[:2]:
        sys.path.insert(0, str(old_src))
    import rmflow
    if Path(rmflow.__file__).resolve().parents[1] != old_src:
        print(f"rmflow was imported from {rmflow.__file__}, not from {old_src}: run with PYTHONPATH={old_src}")
        return 1
    print(f"code: {Path(rmflow.__file__).parent}\nold presets: {old_src / 'rmflow/configs'}\nnew presets: {new_dir}\n")
    # an empty working directory, so that no file there shadows a preset name in read_yaml
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        problems = check(Resolver(old_src / "rmflow" / "configs"), Resolver(new_dir))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
