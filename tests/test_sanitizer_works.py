"""The sanitizer run (make sanitize, tools/sanitize.sh) can fail: in its environment (the
preloaded ASan runtime and libstdc++, ASAN_OPTIONS, UBSAN_OPTIONS), a library built with the
same flags as the sanitized lossext that reads past a malloc'd buffer, or overflows a signed
int, kills the process with a report. Runs only in the sanitizer run; the lossext library there
is checked to be the sanitized one."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

import lossext

pytestmark = pytest.mark.skipif(os.environ.get("LOSSEXT_SANITIZED") != "1", reason="make sanitize only")

SOURCE = textwrap.dedent("""
    #include <stdlib.h>
    int read_past(int n) { int* p = (int*)malloc(n * sizeof(int)); for (int i = 0; i < n; ++i) p[i] = i;
                           int v = p[n]; free(p); return v; }
    int overflow(int x) { return x + 2147483647; }
""")


def test_the_sanitized_library_is_loaded():
    with open("/proc/self/maps") as f:
        maps = f.read()
    assert "libasan" in maps and "libubsan" in maps
    assert lossext._core.library.LIBRARY_PATH in maps and "build/sanitize/pkg" in lossext._core.library.LIBRARY_PATH
    assert not lossext.build_info()["cuda_compiled"]


@pytest.mark.parametrize("call, report", [("read_past(5)", "heap-buffer-overflow"),
                                          ("overflow(5)", "signed integer overflow")])
def test_a_bad_access_is_reported(tmp_path, call, report):
    src = tmp_path / "bad.c"
    src.write_text(SOURCE)
    lib = tmp_path / "libbad.so"
    cc = shutil.which("gcc") or "cc"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                    str(src), "-o", str(lib)], check=True)
    code = f"import ctypes; ctypes.CDLL({str(lib)!r}).{call}; print('no report')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "no report" not in out.stdout
    assert report in out.stderr, out.stderr[-2000:]
