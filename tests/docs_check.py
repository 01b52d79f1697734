#!/usr/bin/env python3
"""The code the docs quote is the code: every code block of a doc that follows a line
<!-- from PATH --> must appear, line for line, in PATH (relative to the source root).
Usage: docs_check.py SOURCE_ROOT DOC..."""
import os
import re
import sys

MARK = re.compile(r"^<!-- from (\S+) -->$")


def quoted_blocks(doc):
    """(line number, path, code) of every marked block of doc."""
    lines = open(doc).read().split("\n")
    i = 0
    while i < len(lines):
        m = MARK.match(lines[i].strip())
        if m:
            start = next(k for k in range(i + 1, len(lines)) if lines[k].startswith("```"))
            end = next(k for k in range(start + 1, len(lines)) if lines[k].startswith("```"))
            yield start + 1, m.group(1), "\n".join(lines[start + 1:end])
            i = end
        i += 1


def main():
    root, docs = sys.argv[1], sys.argv[2:]
    checked = differ = 0
    for doc in docs:
        for line, path, code in quoted_blocks(doc):
            checked += 1
            with open(os.path.join(root, path)) as f:
                if code not in f.read():
                    differ += 1
                    print("%s:%d: this block is no longer in %s" % (doc, line, path))
    print("%d quoted blocks checked, %d differ from their source" % (checked, differ))
    return 1 if differ or checked == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
