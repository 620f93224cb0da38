#!/usr/bin/env python3
"""Download a package's source distribution (NAME-VERSION.tar.gz) from PyPI's simple index.

    local/fetch_sdist.py NAME VERSION OUT

Used by the build scripts (local/build_kenlm.sh, local/install_k2.sh) for the C++ sources they
compile; PyPI is the one registry these machines reach. Writes OUT.part, then renames it to OUT.
"""
import os
import re
import sys
import urllib.request


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    name, version, out = sys.argv[1:]
    page = urllib.request.urlopen(f"https://pypi.org/simple/{name}/", timeout=60).read().decode()
    links = re.findall(r'href="([^"#]*/' + re.escape(f"{name}-{version}") + r'\.tar\.gz)[^"]*"', page)
    if not links:
        print(f"{name} {version}: no source package on PyPI", file=sys.stderr)
        return 1
    urllib.request.urlretrieve(links[0], out + ".part")
    os.replace(out + ".part", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
