"""A small real-text retrieval set built offline from Python's standard-library docstrings.

Each documented function, class or method gives one document (its docstring without the summary
line, or the whole docstring when it has no separate summary); the summary line of some of them is a
query whose single positive is that document. This is
real English technical text with known positives, needs no download, and ships nothing.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
from pathlib import Path

from negflow.files import atomic_output

MODULES = [
    "argparse",
    "ast",
    "asyncio",
    "base64",
    "bisect",
    "bz2",
    "calendar",
    "cmath",
    "codecs",
    "collections",
    "colorsys",
    "concurrent.futures",
    "configparser",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "dis",
    "doctest",
    "email.message",
    "email.utils",
    "enum",
    "filecmp",
    "fnmatch",
    "fractions",
    "ftplib",
    "functools",
    "getopt",
    "gettext",
    "glob",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html",
    "html.parser",
    "http.client",
    "http.cookies",
    "imaplib",
    "inspect",
    "io",
    "ipaddress",
    "itertools",
    "json",
    "logging",
    "logging.handlers",
    "lzma",
    "mailbox",
    "math",
    "mimetypes",
    "multiprocessing",
    "numbers",
    "operator",
    "os",
    "os.path",
    "pathlib",
    "pickle",
    "pickletools",
    "platform",
    "plistlib",
    "poplib",
    "pprint",
    "queue",
    "quopri",
    "random",
    "re",
    "reprlib",
    "sched",
    "secrets",
    "selectors",
    "shelve",
    "shlex",
    "shutil",
    "smtplib",
    "socket",
    "socketserver",
    "sqlite3",
    "ssl",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "symtable",
    "sysconfig",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "tokenize",
    "trace",
    "traceback",
    "types",
    "typing",
    "unittest",
    "unittest.mock",
    "urllib.parse",
    "urllib.request",
    "uuid",
    "warnings",
    "wave",
    "weakref",
    "xml.dom.minidom",
    "xml.etree.ElementTree",
    "xml.sax",
    "zipfile",
    "zoneinfo",
]


MIN_DOC_WORDS = 8


def _members(module) -> list[tuple[str, object]]:
    """Public functions and classes defined in `module`, and the public methods of those classes."""
    out = []
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj) or inspect.isclass(obj):
            out.append((f"{module.__name__}.{name}", obj))
        if inspect.isclass(obj):
            for attr, member in sorted(vars(obj).items()):
                if not attr.startswith("_") and inspect.isfunction(member):
                    out.append((f"{module.__name__}.{name}.{attr}", member))
    return out


def _split_docstring(doc: str) -> tuple[str, str] | None:
    """(summary, body) when the docstring has a one-sentence summary and a real body."""
    summary, _, body = doc.partition("\n\n")
    summary = " ".join(summary.split())
    body = " ".join(body.split())
    if not re.search(r"[A-Za-z]", summary) or "(" in summary.split(" ")[0]:
        return None  # signature lines such as 'f(x, y) -> z' are no query
    if len(summary.split()) < 4 or len(body.split()) < 12:
        return None
    return summary, body


def build_docstring_dataset(max_docs: int | None = None, query_every: int = 4) -> dict[str, list]:
    """Corpus, queries and qrels rows; every `query_every`-th document gets its summary as a query."""
    corpus, queries, qrels = [], [], []
    seen_bodies: set[str] = set()
    seen_summaries: set[str] = set()
    for module_name in MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for qualname, obj in _members(module):
            doc = inspect.getdoc(obj) or ""
            split = _split_docstring(doc)
            summary, body = split if split else (None, " ".join(doc.split()))
            if len(body.split()) < MIN_DOC_WORDS or body in seen_bodies:
                continue
            seen_bodies.add(body)
            corpus.append({"_id": qualname, "title": "", "text": body})
            if summary and len(corpus) % query_every == 0 and summary not in seen_summaries:
                seen_summaries.add(summary)
                query_id = f"q{len(queries)}"
                queries.append({"_id": query_id, "text": summary})
                qrels.append((query_id, qualname, 1))
            if max_docs is not None and len(corpus) >= max_docs:
                return {"corpus": corpus, "queries": queries, "qrels": qrels}
    return {"corpus": corpus, "queries": queries, "qrels": qrels}


def write_beir(data: dict[str, list], corpus_path: str, queries_path: str, qrels_path: str) -> None:
    """Write the three BEIR files, each atomically."""
    for path, rows in ((corpus_path, data["corpus"]), (queries_path, data["queries"])):
        with atomic_output(path) as tmp:
            Path(tmp).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with atomic_output(qrels_path) as tmp:
        lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, d, s in data["qrels"]]
        Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8")
