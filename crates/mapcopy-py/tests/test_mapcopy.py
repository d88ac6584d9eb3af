"""pytest suite for the `mapcopy` Python package.

Run with `pytest crates/mapcopy-py/tests` after `pip install ./crates/mapcopy-py`.
With MAPCOPY_REQUIRE_ALL=1 (as in CI) a strategy this machine cannot use
fails instead of skipping, except reflink, which needs xfs/btrfs: as root,
the reflink case runs on an xfs loop image the test makes; elsewhere it is
skipped with probe's reason.
"""

import contextlib
import gc
import mmap
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import numpy as np
import pytest

import mapcopy

REQUIRE_ALL = os.environ.get("MAPCOPY_REQUIRE_ALL") == "1"
STRATEGIES = ["lease", "reflink", "guard", "lazy", "eager"]
SIZE = 1 << 20  # 256 pages

# Rewrites the file in place with other bytes, several times, then
# truncates it to 0: what the mapping must not see.
WRITER = textwrap.dedent(
    """
    import os, sys
    path, steps = sys.argv[1], sys.argv[2:] or ["rewrite", "truncate"]
    size = os.path.getsize(path)
    if "rewrite" in steps:
        for i in range(3):
            with open(path, "r+b") as f:
                f.write(bytes([0xA0 + i]) * size)
                f.flush()
                os.fsync(f.fileno())
    if "truncate" in steps:
        os.truncate(path, 0)
    """
)


def pattern(size=SIZE):
    """Bytes that differ from page to page and from the writer's."""
    return (np.arange(size // 4, dtype=np.uint32) * 2654435761 % 1000003).astype(
        np.uint32
    ).tobytes()


def write_file(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def consistency_for(strategy):
    return "per-page" if strategy == "lazy" else "point-in-time"


@contextlib.contextmanager
def xfs_reflink_dir():
    """A directory on a fresh xfs (reflink=1) loop image, or None."""
    if os.geteuid() != 0 or not (shutil.which("mkfs.xfs") and shutil.which("losetup")):
        yield None
        return
    base = tempfile.mkdtemp(prefix="mapcopy-py-xfs-")
    img, mnt = os.path.join(base, "img"), os.path.join(base, "mnt")
    os.mkdir(mnt)
    mounted = False
    try:
        with open(img, "wb") as f:
            f.truncate(512 << 20)
        subprocess.run(
            ["mkfs.xfs", "-q", "-m", "reflink=1", img], check=True, capture_output=True
        )
        r = subprocess.run(["mount", "-o", "loop", img, mnt], capture_output=True)
        if r.returncode != 0:
            print(f"cannot mount an xfs loop image: {r.stderr.decode().strip()}")
            yield None
            return
        mounted = True
        yield mnt
    finally:
        if mounted:
            subprocess.run(["umount", mnt], check=False)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=STRATEGIES)
def mapped_file(request, tmp_path):
    """(strategy, path) of a file in a directory where `strategy` is usable,
    or a skip (a failure under MAPCOPY_REQUIRE_ALL) with probe's reason."""
    strategy = request.param
    with contextlib.ExitStack() as stack:
        directory = str(tmp_path)
        path = write_file(os.path.join(directory, "data.bin"), pattern())
        verdict = usable(strategy, path)
        if verdict is not True and strategy == "reflink":
            xfs = stack.enter_context(xfs_reflink_dir())
            if xfs is not None:
                path = write_file(os.path.join(xfs, "data.bin"), pattern())
                verdict = usable(strategy, path)
        if verdict is not True:
            msg = f"strategy {strategy} unusable here: {verdict}"
            print(msg)
            if REQUIRE_ALL and strategy != "reflink":
                pytest.fail(msg)
            pytest.skip(msg)
        yield strategy, path


def usable(strategy, path):
    for s in mapcopy.probe(path)["strategies"]:
        if s["strategy"] == strategy:
            return True if s["usable"] else s["reason"]
    return f"probe does not list {strategy}"


def test_rewrite_and_truncate_by_another_process(mapped_file):
    strategy, path = mapped_file
    expected = np.frombuffer(pattern(), dtype=np.uint32).copy()
    with mapcopy.open(
        path, strategy=strategy, consistency=consistency_for(strategy)
    ) as m:
        assert m.strategy == strategy
        assert len(m) == SIZE
        a = np.frombuffer(m, dtype=np.uint32)
        assert not a.flags.writeable
        # Touch every page first (Lazy snapshots a page at its first access).
        assert np.array_equal(a, expected)
        writer = subprocess.Popen([sys.executable, "-c", WRITER, path])
        reads = 0
        while writer.poll() is None:
            assert np.array_equal(a, expected)
            reads += 1
        assert writer.wait() == 0
        assert os.path.getsize(path) == 0
        assert np.array_equal(a, expected), "the mapping changed"
        assert a[-1] == expected[-1]  # past the file's new end: no SIGBUS
        print(f"{strategy}: {reads} full reads during the writer, all unchanged")
        del a


# The control: the same steps with mmap.ACCESS_COPY (MAP_PRIVATE), in a
# child because its truncated pages raise SIGBUS. It must see the rewrite
# or die, proving the check above can fail.
CONTROL = textwrap.dedent(
    """
    import mmap, subprocess, sys
    import numpy as np
    path, writer = sys.argv[1], sys.argv[2]
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    a = np.frombuffer(m, dtype=np.uint32)
    before = a.copy()
    subprocess.run([sys.executable, "-c", writer, path, "rewrite"], check=True)
    print("changed" if not np.array_equal(a, before) else "unchanged", flush=True)
    subprocess.run([sys.executable, "-c", writer, path, "truncate"], check=True)
    print("read", int(a[-1]), flush=True)  # SIGBUS expected here
    """
)


def test_control_mmap_access_copy_sees_the_writer(tmp_path):
    path = write_file(tmp_path / "data.bin", pattern())
    r = subprocess.run(
        [sys.executable, "-c", CONTROL, path, WRITER], capture_output=True, text=True
    )
    print(f"control: exit {r.returncode}, stdout {r.stdout!r}")
    # A plain private mapping shows the other process's rewrite ...
    assert r.stdout.split()[:1] == ["changed"], (r.returncode, r.stdout, r.stderr)
    # ... and faults on the truncated pages.
    assert r.returncode == -signal.SIGBUS, (r.returncode, r.stdout, r.stderr)


def test_every_named_strategy_maps(mapped_file):
    strategy, path = mapped_file
    data = pattern()
    for populate in (False, True):
        m = mapcopy.open(
            path,
            strategy=strategy,
            consistency=consistency_for(strategy),
            populate=populate,
        )
        assert m.strategy == strategy
        assert m.consistency == consistency_for(strategy)
        assert bytes(m) == data
        m.close()
    with mapcopy.open(
        path, strategy=strategy, consistency=consistency_for(strategy),
        offset=8192 + 100, length=3 * 4096,
    ) as m:
        assert bytes(m) == data[8192 + 100 : 8192 + 100 + 3 * 4096]


def test_auto_offset_length_populate(tmp_path):
    data = pattern()
    path = write_file(tmp_path / "data.bin", data)
    with mapcopy.open(path) as m:
        assert m.strategy in STRATEGIES
        assert m.strategy == mapcopy.probe(path)["auto"]
        assert bytes(m) == data
    with mapcopy.open(path, offset=5000, length=10000, populate=True) as m:
        assert len(m) == 10000
        assert m.offset == 5000
        mv = memoryview(m)
        assert mv.readonly and mv.format == "B" and mv.nbytes == 10000
        assert mv.tobytes() == data[5000:15000]
        mv.release()
    with mapcopy.open(path, offset=len(data)) as m:
        assert len(m) == 0
        assert bytes(m) == b""


def test_sealed_memfd_is_immutable_and_zero_copy():
    import fcntl

    data = pattern()
    fd = os.memfd_create("mapcopy-py", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.write(fd, data)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK)
        path = f"/proc/self/fd/{fd}"
        with mapcopy.open(path) as m:
            assert m.strategy == "immutable"
            with pytest.raises(PermissionError):
                os.pwrite(fd, b"x", 0)  # the kernel refuses the writer
            a = np.frombuffer(m, dtype=np.uint8)
            assert a.tobytes() == data
            del a
        with pytest.raises(mapcopy.UnsupportedError, match="can be written"):
            with tempfile.NamedTemporaryFile() as f:
                f.write(data)
                f.flush()
                mapcopy.open(f.name, strategy="immutable")
    finally:
        os.close(fd)


def test_memoryview_and_numpy_are_zero_copy(tmp_path):
    path = write_file(tmp_path / "data.bin", pattern())
    with mapcopy.open(path, strategy="eager") as m:
        a = np.frombuffer(m, dtype=np.uint32)
        b = np.frombuffer(m, dtype=np.uint32)
        mv = memoryview(m)
        # The same memory, not copies.
        assert a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
        assert np.shares_memory(a, np.frombuffer(mv, dtype=np.uint32))
        with pytest.raises(ValueError):
            a[0] = 1  # read-only
        del a, b
        mv.release()


def test_writable_buffer_refused(tmp_path):
    import ctypes

    path = write_file(tmp_path / "data.bin", b"x" * 100)
    with mapcopy.open(path) as m:
        with pytest.raises((BufferError, TypeError)) as e:
            (ctypes.c_char * 100).from_buffer(m)
        assert "writable" in str(e.value) or "read-only" in str(e.value)


def test_context_manager_closes(tmp_path):
    path = write_file(tmp_path / "data.bin", b"abc")
    with mapcopy.open(path) as m:
        assert bytes(m) == b"abc"
        assert not m.closed
    assert m.closed
    with pytest.raises(ValueError, match="closed"):
        len(m)
    with pytest.raises(ValueError, match="closed"):
        memoryview(m)
    m.close()  # a second close does nothing
    assert "closed" in repr(m)


def test_close_with_live_views_raises_and_keeps_them_valid(tmp_path):
    data = pattern()
    path = write_file(tmp_path / "data.bin", data)
    m = mapcopy.open(path)
    mv = memoryview(m)
    a = np.frombuffer(m, dtype=np.uint8)
    with pytest.raises(BufferError, match="exported"):
        m.close()
    assert not m.closed
    assert mv.tobytes() == data and a.tobytes() == data
    mv.release()
    with pytest.raises(BufferError):
        m.close()  # the numpy array still holds a view
    assert a.tobytes() == data
    del a
    gc.collect()
    m.close()
    assert m.closed


def test_context_manager_exit_with_live_view(tmp_path):
    path = write_file(tmp_path / "data.bin", b"hello")
    with pytest.raises(BufferError):
        with mapcopy.open(path) as m:
            mv = memoryview(m)
    assert not m.closed
    assert mv.tobytes() == b"hello"  # still mapped: never a dangling view
    mv.release()
    m.close()
    assert m.closed


def test_view_keeps_object_alive(tmp_path):
    path = write_file(tmp_path / "data.bin", b"alive")
    mv = memoryview(mapcopy.open(path))  # the object's only reference is the view's
    gc.collect()
    assert mv.tobytes() == b"alive"
    assert isinstance(mv.obj, mapcopy.MapCopy)
    mv.release()


def test_missing_file(tmp_path):
    missing = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError) as e:
        mapcopy.open(missing)
    assert e.value.filename == missing


def test_permission_denied(tmp_path):
    if os.geteuid() == 0:
        # Root opens anything: make the check in a child that drops to nobody.
        if not hasattr(os, "setuid"):
            pytest.skip("no setuid")
        path = write_file(tmp_path / "secret", b"x")
        os.chmod(path, 0o600)
        os.chmod(tmp_path, 0o755)
        code = (
            "import os, sys, mapcopy\n"
            "os.setgid(65534); os.setuid(65534)\n"
            "try:\n    mapcopy.open(sys.argv[1])\n"
            "except PermissionError:\n    sys.exit(0)\n"
            "sys.exit(1)\n"
        )
        r = subprocess.run([sys.executable, "-c", code, path], capture_output=True)
        assert r.returncode == 0, r.stderr.decode()
    else:
        path = write_file(tmp_path / "secret", b"x")
        os.chmod(path, 0)
        with pytest.raises(PermissionError):
            mapcopy.open(path)


def test_directory_is_invalid_input(tmp_path):
    # The Rust crate calls a directory InvalidInput: ValueError.
    with pytest.raises(ValueError, match="directory"):
        mapcopy.open(str(tmp_path))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"strategy": "bogus"}, "unknown strategy"),
        ({"consistency": "sometimes"}, "unknown consistency"),
        ({"offset": 1 << 30}, "past the end"),
        ({"offset": -1}, "offset must be >= 0"),
        ({"length": -5}, "length must be >= 0"),
    ],
)
def test_bad_inputs_are_value_errors(tmp_path, kwargs, match):
    path = write_file(tmp_path / "data.bin", b"0123456789")
    with pytest.raises(ValueError, match=match):
        mapcopy.open(path, **kwargs)


def test_bad_types(tmp_path):
    path = write_file(tmp_path / "data.bin", b"0123456789")
    with pytest.raises(TypeError):
        mapcopy.open(path, offset="3")
    with pytest.raises(TypeError):
        mapcopy.open(path, 0)  # keywords only
    with pytest.raises(TypeError):
        mapcopy.open(None)


def test_lazy_point_in_time_is_unsupported(tmp_path):
    path = write_file(tmp_path / "data.bin", b"x" * 4096)
    with pytest.raises(mapcopy.UnsupportedError, match="per-page|PerPage"):
        mapcopy.open(path, strategy="lazy", consistency="point-in-time")
    assert issubclass(mapcopy.UnsupportedError, OSError)


def test_gil_released_while_mapping(tmp_path):
    # open() of a FIFO blocks until a writer comes; a shell opens it after
    # 1 s. Meanwhile this thread must keep running (the GIL is released).
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    opener = subprocess.Popen(["sh", "-c", f"sleep 1; exec 3>'{fifo}'"])
    result = {}

    def target():
        try:
            mapcopy.open(fifo)
        except Exception as e:  # a FIFO is not a regular file
            result["error"] = e

    t = threading.Thread(target=target)
    t.start()
    ticks = 0
    while t.is_alive():
        time.sleep(0.01)
        ticks += 1
    t.join()
    opener.wait()
    print(f"{ticks} ticks of the main thread while open() blocked")
    assert ticks >= 20
    assert isinstance(result.get("error"), ValueError), result


def test_probe_dict(tmp_path):
    assert mapcopy.__version__
    p = mapcopy.probe()
    assert set(p) == {"kernel", "path", "filesystem", "facts", "strategies", "auto", "auto_error"}
    assert p["path"] is None and p["filesystem"] is None
    assert [s["strategy"] for s in p["strategies"]] == ["immutable", "kernel"] + STRATEGIES
    for s in p["strategies"]:
        assert isinstance(s["usable"], bool)
        assert isinstance(s["how" if s["usable"] else "reason"], str)
        assert s["consistency"] in ("point-in-time", "per-page")
        assert isinstance(s["lacks"], list)
    assert {f["topic"] for f in p["facts"]} >= {"capabilities", "userfaultfd", "lease"}
    assert p["auto"] in STRATEGIES and p["auto_error"] is None
    path = write_file(tmp_path / "data.bin", b"x")
    q = mapcopy.probe(path=path)
    assert q["path"] == path
    assert isinstance(q["filesystem"]["name"], str)
    r = mapcopy.probe(str(tmp_path / "missing"))
    assert "error" in r["filesystem"] and r["auto"] is None and r["auto_error"]


def test_forked_child_reads_the_snapshot(mapped_file):
    # os.fork() is libc's fork(): the crate's fork handlers run, and the
    # child reads the parent's snapshot even after a writer rewrote and
    # truncated the file.
    strategy, path = mapped_file
    data = pattern()
    with mapcopy.open(
        path, strategy=strategy, consistency=consistency_for(strategy)
    ) as m:
        # Read every page first (Lazy snapshots a page at its first access).
        with memoryview(m) as mv:
            assert mv.tobytes() == data
        subprocess.run([sys.executable, "-c", WRITER, path], check=True)
        pid = os.fork()
        if pid == 0:  # the child: no pytest machinery, just an exit code
            try:
                ok = memoryview(m).tobytes() == data
            except BaseException:
                ok = False
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert memoryview(m).tobytes() == data
