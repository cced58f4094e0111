"""`python -m docgen`: write the references into their pages, between their
`<!-- generated: NAME -->` and `<!-- end generated: NAME -->` lines, so the pages read whole
in the repository too; `--check` only says which are stale (tests/test_docs.py)."""

from __future__ import annotations

import sys

from docgen import pages


def main(argv: list[str]) -> int:
    stale = pages.stale()
    if "--check" in argv:
        for path in stale:
            print(f"{path} is not current: run python -m docgen", file=sys.stderr)
        return 1 if stale else 0
    for path in pages.write():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
