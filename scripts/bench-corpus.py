#!/usr/bin/env python3
"""Builds a multi-megabyte English benchmark text from the books that ship with the Rust toolchain.

    python3 scripts/bench-corpus.py [OUT]      # default target/bench/english.txt

Rustup installs The Rust Programming Language, the Reference and the Rustonomicon as HTML
(`rustc --print sysroot`/share/doc/rust/html/*/print.html); their prose, with the markup stripped,
is several megabytes of ordinary English with some code, and every machine that builds scratchllm
has it, so tokenizer benchmarks can be repeated anywhere without downloading a corpus.
"""
import html.parser, os, re, subprocess, sys

class Text(html.parser.HTMLParser):
    SKIP = {"script", "style", "nav", "head"}

    def __init__(self):
        super().__init__()
        self.out, self.depth = [], 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.depth += 1
        elif tag in ("p", "br", "li", "h1", "h2", "h3", "h4", "pre", "tr", "div"):
            self.out.append("\n")

    def handle_endtag(self, tag):
        if tag in self.SKIP and self.depth:
            self.depth -= 1

    def handle_data(self, data):
        if not self.depth:
            self.out.append(data)

out = sys.argv[1] if len(sys.argv) > 1 else "target/bench/english.txt"
sysroot = subprocess.run(["rustc", "--print", "sysroot"], capture_output=True, text=True, check=True).stdout.strip()
docs = os.path.join(sysroot, "share", "doc", "rust", "html")
parts = []
for book in ("book", "reference", "nomicon", "rust-by-example", "edition-guide", "embedded-book"):
    path = os.path.join(docs, book, "print.html")
    if os.path.exists(path):
        p = Text()
        p.feed(open(path, encoding="utf-8").read())
        text = "".join(p.out)
        parts.append(re.sub(r"\n{3,}", "\n\n", "\n".join(line.rstrip() for line in text.splitlines())).strip())
if not parts:
    sys.exit(f"no books found under {docs}")
os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
with open(out, "w", encoding="utf-8") as f:
    f.write("\n\n".join(parts))
print(f"{out}: {os.path.getsize(out) / 1e6:.1f} MB")
