"""Reading webdataset tar shards without ``tarfile``: members in order, grouped into samples.

Shared by the training stream (:mod:`swagcli.train.data`), the image-shard readers of the
transfer stages and the img2dataset reader of :mod:`swagcli.prep.columnar`; torch-free.
"""

from __future__ import annotations


class BadTar(Exception):
    pass


def tar_members(f):
    """(name, bytes, offset of the bytes in the file) of the regular files of a tar stream, in
    order: a lean reader of the subset of tar that webdataset shards use (ustar/GNU/pax headers,
    long names), ~6x less overhead per member than ``tarfile``. Raises :class:`BadTar` on a bad
    header checksum or a truncated member."""
    read = f.read
    long_name = None
    pos = 0
    while True:
        hdr = read(512)
        if len(hdr) < 512:
            if hdr:
                raise BadTar("truncated header")
            return  # EOF without the end-of-archive blocks: tolerated, as tarfile does
        if hdr.count(0) == 512:
            return
        try:
            size = int(hdr[124:136].rstrip(b"\0 ") or b"0", 8)
            chk = int(hdr[148:156].rstrip(b"\0 ") or b"0", 8)
        except ValueError:
            raise BadTar("bad header") from None
        if chk != sum(hdr[:148]) + 256 + sum(hdr[156:]):
            raise BadTar("bad checksum")
        data = read(size)
        if len(data) < size:
            raise BadTar("truncated member")
        pad = -size % 512
        if pad and len(read(pad)) < pad:
            raise BadTar("truncated member")
        offset, pos = pos + 512, pos + 512 + size + pad
        kind = hdr[156:157]
        if kind == b"L":  # GNU long name for the next member
            long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            continue
        if kind == b"x":  # pax extended header: the 'path' record names the next member
            long_name = _pax_path(data) or long_name
            continue
        if kind not in (b"0", b"\0", b"7"):
            long_name = None
            continue  # directories, links, global pax headers, ...
        name, long_name = long_name if long_name is not None else _header_name(hdr), None
        yield name, data, offset


def _header_name(hdr: bytes) -> str:
    """A member's name from its header (ustar's prefix field joined in front)."""
    name = hdr[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    if hdr[257:262] == b"ustar" and hdr[345] != 0:
        name = hdr[345:500].split(b"\0", 1)[0].decode("utf-8", "surrogateescape") + "/" + name
    return name


def member_key(name: str) -> tuple[str, str] | None:
    """webdataset's grouping rule: ``dir/KEY.EXT`` -> (``dir/KEY``, lower-case ``EXT``), split at
    the first dot of the file name; None for names without one and for ``__*__`` metadata."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot < 0 or (slash == 0 and name.startswith("__") and name.endswith("__")):
        return None
    return name[:dot], name[dot + 1:].lower()


def _pax_path(data: bytes):
    path, i = None, 0
    while i < len(data):
        sp = data.find(b" ", i)
        if sp < 0:
            break
        n = int(data[i:sp])
        key, _, value = data[sp + 1:i + n - 1].partition(b"=")
        if key == b"path":
            path = value.decode("utf-8", "surrogateescape")
        i += n
    return path


def tar_samples(f):
    """The samples of a tar stream as webdataset groups them: ``{"__key__": KEY, EXT: bytes}``
    for members ``KEY.EXT`` in a row with the same key (``__*__`` metadata skipped). Raises
    :class:`BadTar` where :func:`tar_members` does."""
    cur = None
    for name, data, _ in tar_members(f):
        split = member_key(name)
        if split is None:
            continue
        key, ext = split
        if cur is None or cur["__key__"] != key:
            if cur is not None:
                yield cur
            cur = {"__key__": key}
        cur[ext] = data
    if cur is not None:
        yield cur


def tar_keys(f):
    """The sample keys of a tar stream in order (each once per run of members), reading only the
    headers: member data is skipped with ``seek``. Raises :class:`BadTar` on a bad header."""
    last = None
    long_name = None
    while True:
        hdr = f.read(512)
        if len(hdr) < 512 or hdr.count(0) == 512:
            return
        try:
            size = int(hdr[124:136].rstrip(b"\0 ") or b"0", 8)
        except ValueError:
            raise BadTar("bad header") from None
        kind = hdr[156:157]
        padded = size + (-size % 512)
        if kind in (b"L", b"x"):
            data = f.read(padded)[:size]
            long_name = (data.rstrip(b"\0").decode("utf-8", "surrogateescape") if kind == b"L"
                         else _pax_path(data) or long_name)
            continue
        f.seek(padded, 1)
        if kind not in (b"0", b"\0", b"7"):
            long_name = None
            continue
        name, long_name = long_name if long_name is not None else _header_name(hdr), None
        split = member_key(name)
        if split is not None and split[0] != last:
            last = split[0]
            yield last
