"""Versions of a state dict (docs/python.md, "Weight sync"): a Publisher
writes each new version into a free buffer of a live arena and commits it;
a Subscriber waits for versions, pins the newest and reads it in place or
copies it into tensors of its own, and follows the publisher through a
replace() without being told the new names.

A tree is the arena slot `prefix` (the live allocation) and its views
`prefix/<key>`. Two rules make a tree safe to read from its names alone:
every view exists before the tree's first commit, and replace() removes the
arena's name before any view's. So a subscriber that lists the views after
seeing version 1, and then still finds `prefix` naming the same allocation,
has them all.
"""
import ctypes
import time
from typing import Any, Dict, List, Mapping, Optional, Union

from . import _buffers
from ._args import UINT64_MAX, integer as _int, name as _name
from ._capi import (MAX_BUFFERS, AlreadyExists, InvalidArgument, NotFound, PermissionDenied, Timeout, Unavailable, check,
                    gpb_acquired, lib)
from ._publish import _Source, publish_state_dict


def _uid_of(owner):
    """A uid from a uid or a user name; None stays None."""
    if owner is None:
        return None
    if isinstance(owner, str):
        import pwd
        try:
            return pwd.getpwnam(owner).pw_uid
        except KeyError:
            raise InvalidArgument(f"owner={owner!r}: no such user") from None
    return _int(owner, 0, (1 << 32) - 1, "owner")


def _destroy_tree(client, prefix):
    """Removes the tree `prefix` names now: the arena's name first (see the
    module's docstring), then its views'. Gone already is not an error."""
    try:
        allocation_id = client.lookup(prefix).allocation_id
    except NotFound:
        return
    keys = client._keys_under(prefix, allocation_id)
    for name in [prefix] + [f"{prefix}/{k}" for k in keys]:
        try:
            client.destroy(name)
        except NotFound:
            pass


class Publisher:
    """Writes new versions of a state dict under one prefix, for Subscribers
    in any process. Made by Client.publisher(); the tree stays after close()
    (its last version readable) unless close(destroy=True).

    Each version goes into a buffer no subscriber pins (with buffers=1, the
    only one, in place: subscribers may read it torn). Not thread-safe: one
    thread at a time."""

    def __init__(self, client, prefix: str, state_dict: Mapping[str, Any], *, buffers: int, mode: int,
                 backend: Optional[str], alignment: int, replace: bool) -> None:
        self._client = client
        self._prefix = prefix
        self._buffers = _int(buffers, 1, MAX_BUFFERS, "buffers")
        self._options = dict(mode=mode, backend=backend, alignment=alignment)
        self._writer = None
        self._views: Dict[str, Any] = {}
        self._arrays: Dict[int, List[Any]] = {}  # buffer -> one array per key, made once
        # update()'s batched copies (see _copy_in): for the sources of the last calls
        self._copy_plans: Dict[int, Any] = {}  # buffer -> BatchedCopy, or None where one launch cannot do it
        self._seen = None       # SameTensors of the sources the plans are for, or None: no plans
        self._addresses = None  # the last sources' addresses, while there are no plans
        self._begun: Optional[int] = None
        self._version = 0
        _name(prefix, "prefix")
        if replace:
            _destroy_tree(client, prefix)
        try:
            self._build(state_dict)
        except AlreadyExists as e:
            raise AlreadyExists(f"{e.args[0]} (a tree is already published under '{prefix}', by an earlier run or "
                                "another publisher: publisher(..., replace=True) replaces it, and its "
                                "subscribers follow)") from None
        self.update(state_dict)

    prefix = property(lambda self: self._prefix)
    buffers = property(lambda self: self._buffers)
    version = property(lambda self: self._version, doc="The last version committed (0: none).")
    keys = property(lambda self: list(self._keys), doc="The published keys, in publishing order.")

    def _build(self, state_dict):
        sources = [_Source(t) for t in state_dict.values()]
        if any(s.kind == "cupy" for s in sources):
            raise InvalidArgument("a Publisher takes torch tensors or NumPy arrays")
        self._views = publish_state_dict(self._client, self._prefix, state_dict, buffers=self._buffers,
                                         **self._options)
        self._keys = list(self._views)
        self._shapes = [s.shape for s in sources]
        self._to = "torch" if any(s.kind == "torch" for s in sources) else "numpy"
        first = next(iter(self._views.values()), None)
        self._cuda = first is not None and first.is_cuda
        self._device_index = first.device_id if self._cuda else None
        writer = ctypes.c_void_p()
        check(lib.gpb_writer_open, self._client._h(), _name(self._prefix), ctypes.byref(writer))
        self._writer = writer
        self._arrays = {}
        self._drop_copy_plans()
        self._version = 0

    def _w(self):
        if not self._writer:
            raise Unavailable("publisher is closed")
        return self._writer

    def _buffer_arrays(self, buffer):
        arrays = self._arrays.get(buffer)
        if arrays is None:
            views = [self._views[k] for k in self._keys]
            arrays = self._arrays[buffer] = _buffers.arrays_in(views, buffer, self._to, readonly=False)
        return arrays

    def _stream(self, stream, srcs):
        """CUDA: (the torch stream to copy on, or None for the current one;
        its raw handle, to commit with); host: (None, None). A stream other
        than the current one (which made the sources) is ordered after it,
        and the sources' memory is kept from reuse until it has read them.
        The current stream is not made a torch Stream (~13 us a call)."""
        if not self._cuda:
            return None, None
        if stream is None:
            return None, _buffers.raw_stream(None, self._device_index)
        import torch
        s = _buffers.cuda_stream(stream, self._device_index)
        current = torch.cuda.current_stream(self._device_index)
        if s != current:
            s.wait_stream(current)
            for t in srcs:
                if _buffers.is_torch(t) and t.is_cuda:
                    t.record_stream(s)
        return s, s.cuda_stream

    def begin(self, wait: Optional[float] = None) -> Dict[str, Any]:
        """Takes a buffer to write the next version into and returns its
        arrays {key: tensor} (the same objects each time that buffer comes
        round). wait: seconds to wait for a subscriber to release a buffer
        when every one is pinned (None: no limit, 0: not at all), then Busy.
        CUDA: first waits for the previous commit's stream to finish."""
        return dict(zip(self._keys, self._buffer_arrays(self._begin(wait))))

    def _begin(self, wait):
        if self._begun is not None:
            raise InvalidArgument(f"buffer {self._begun} is begun already: commit() or abort() it")
        buffer = ctypes.c_uint32()
        check(lib.gpb_writer_begin, self._w(), _buffers.ms_left(_buffers.deadline(wait, "wait")),
              ctypes.byref(buffer))
        self._begun = buffer.value
        return buffer.value

    def commit(self, stream: Any = None) -> int:
        """Publishes the begun buffer as the next version and returns it.
        CUDA: subscribers see it once `stream` (default: the current one)
        has run the writes queued on it; nothing waits here."""
        if self._begun is None:
            raise InvalidArgument("no buffer is begun: call begin() first")
        s = _buffers.raw_stream(stream, self._device_index) if self._cuda else None
        version = ctypes.c_uint64()
        try:
            check(lib.gpb_writer_commit, self._w(), s, ctypes.byref(version))
        finally:
            self._begun = None  # committed, or given back by the library
        self._version = version.value
        return self._version

    def abort(self) -> None:
        """Gives the begun buffer back unpublished."""
        if self._begun is None:
            return
        self._begun = None
        check(lib.gpb_writer_abort, self._w())

    def update(self, state_dict: Mapping[str, Any], *, stream: Any = None, wait: Optional[float] = None) -> int:
        """Publishes `state_dict` (the published keys and shapes) as the next
        version: begin(wait), a copy into the buffer on `stream` (CUDA;
        default: the current stream), commit. Returns the version.

        CUDA: one kernel launch for the whole tree where the sources allow
        (each contiguous, of its published dtype, on the tree's GPU), as
        copy_into does, once the same sources come a second time running
        (a trainer's parameters, or tensors made again at the same
        addresses); else a copy per tensor, converting."""
        srcs = self._ordered(state_dict)
        # Checked before begin(): a refused update takes no buffer (with one
        # buffer, a write begun and given up leaves no whole version).
        same = self._seen is not None and self._seen.holds(srcs)
        if not same:
            _buffers.check_shapes(self._keys, srcs, self._shapes)
        s, raw = self._stream(stream, srcs)
        buffer = self._begin(wait)
        try:
            dsts = self._buffer_arrays(buffer)
            batched = self._copy_in(buffer, dsts, srcs, same)
            if batched is not None:
                batched.run(raw)
            else:
                with _buffers.on_stream(s):
                    _buffers.copy_all(dsts, srcs)
        except BaseException:
            self.abort()
            raise
        return self.commit(raw)

    def _copy_in(self, buffer, dsts, srcs, same):
        """The BatchedCopy of `srcs` (their shapes checked by the caller)
        into `buffer`, or None: a copy each. `same`: SameTensors said the
        sources are those of the plans kept. Plans are made per buffer for
        sources seen twice running (by their addresses, ~0.1 ms for 1,000
        tensors), then used while SameTensors says they are the same:
        sources made anew each call at other addresses cost neither a plan
        nor its check."""
        if not same:
            addresses = _buffers.addresses_of(srcs) if self._cuda else None
            seen_before = addresses is not None and addresses == self._addresses
            self._drop_copy_plans()
            self._seen = _buffers.SameTensors.of(srcs) if seen_before else None
            if self._seen is None:
                self._addresses = addresses
                return None
        batched = self._copy_plans.get(buffer, False)
        if batched is False:
            batched = self._copy_plans[buffer] = _buffers.BatchedCopy.make(dsts, srcs, self._device_index)
        return batched

    def _drop_copy_plans(self):
        self._copy_plans, self._seen, self._addresses = {}, None, None

    def _ordered(self, state_dict):
        """The sources in publishing order (their shapes: _copy_in)."""
        if len(state_dict) != len(self._keys):
            raise InvalidArgument(f"{len(state_dict)} tensors where {len(self._keys)} are published; "
                                  "use replace() for another set")
        try:
            return [state_dict[k] for k in self._keys]
        except KeyError as e:
            raise InvalidArgument(f"'{e.args[0]}' is published but not in the state dict; "
                                  "use replace() for another set") from None

    def replace(self, state_dict: Mapping[str, Any], *, stream: Any = None) -> int:
        """Publishes a new set of tensors (other names, shapes, dtypes) under
        the same prefix: removes this tree, makes a new one and commits
        `state_dict` as its version 1, which it returns. Subscribers follow.
        If making the new tree fails, the publisher is left closed."""
        self._close_writer()
        _destroy_tree(self._client, self._prefix)
        self._build(state_dict)
        return self.update(state_dict, stream=stream)

    def _close_writer(self):
        writer, self._writer = self._writer, None
        self._begun = None
        if writer:
            lib.gpb_writer_close(writer)  # aborts a write not committed
        self._arrays, self._views = {}, {}
        self._drop_copy_plans()  # their device tables go now

    def close(self, destroy: bool = False) -> None:
        """Stops writing; destroy=True also removes the tree."""
        self._close_writer()
        if destroy:
            _destroy_tree(self._client, self._prefix)

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self._close_writer()
        except Exception:  # interpreter shutdown
            pass


class _Tree:
    """One allocation a Subscriber follows: its reader, and the views under
    the prefix once a version shows they are all there."""

    def __init__(self, client, prefix, reader, info):
        self.client, self.prefix, self.reader = client, prefix, reader
        self.allocation_id = info.allocation_id
        self.owner_uid = info.owner_uid
        self.buffers = info.buffers
        self.cuda = info.device.startswith("cuda")
        self.device_index = int(info.device[5:]) if info.device[5:].isdigit() else None
        self.keys: Optional[List[str]] = None
        self.views: List[Any] = []
        self.arrays: Dict[int, Dict[str, Any]] = {}

    @staticmethod
    def open(client, prefix):
        """A reader on the allocation `prefix` names; NotFound if none."""
        while True:
            before = client.lookup(prefix)
            reader = ctypes.c_void_p()
            check(lib.gpb_reader_open, client._h(), _name(prefix), ctypes.byref(reader))
            try:
                after = client.lookup(prefix)
            except BaseException:
                lib.gpb_reader_close(reader)
                raise
            # Allocation ids are never reused: the same one before and after
            # the open is the one the reader was opened on.
            if after.allocation_id == before.allocation_id:
                return _Tree(client, prefix, reader, after)
            lib.gpb_reader_close(reader)

    def load(self):
        """The views, attached once; NotFound if `prefix` names another
        allocation by now (the module's docstring says why that check makes
        the list whole)."""
        if self.keys is not None:
            return
        keys = self.client._keys_under(self.prefix, self.allocation_id)
        views = self.client.attach_many([f"{self.prefix}/{k}" for k in keys], readonly=True)
        if self.client.lookup(self.prefix).allocation_id != self.allocation_id:
            raise NotFound(f"'{self.prefix}' was replaced")
        self.keys, self.views = keys, views

    def arrays_in(self, buffer, to):
        arrays = self.arrays.get(buffer)
        if arrays is None:
            self.load()
            arrays = self.arrays[buffer] = dict(zip(self.keys, _buffers.arrays_in(self.views, buffer, to, True)))
        return arrays

    def close(self):
        reader, self.reader = self.reader, None
        if reader:
            lib.gpb_reader_close(reader)  # gives back its pin
        self.views, self.arrays = [], {}


class Subscriber:
    """Follows the versions published under one prefix. Made by
    Client.subscriber(). Each acquired version stays pinned (no writer
    touches its buffer, with 2+ buffers) until the stream that reads it is
    done with it after the next acquire or release(), or until close(). Not thread-safe: one thread at a time.

    Versions count from 1 in each tree: after the publisher's replace() the
    subscriber moves to the new tree and its version starts again.

    Names are first come, first served, and a replace() leaves the prefix
    free for a moment: a subscriber follows only trees of one owner, the
    `owner` given (a uid or a user name), else the owner of the first tree
    it opens, and raises PermissionDenied for a tree of anyone else."""

    def __init__(self, client, prefix: str, *, to: str = "torch", timeout: Optional[float] = 0,
                 owner: Union[int, str, None] = None) -> None:
        if to not in ("torch", "numpy"):
            raise InvalidArgument(f"to={to!r}: expected 'torch' or 'numpy'")
        self._owner = _uid_of(owner)
        self._client, self._prefix, self._to = client, prefix, to
        self._tree: Optional[_Tree] = None
        self._version = 0      # the last acquired, in the current tree
        self._buffer = None    # the pinned buffer, None when nothing is pinned
        self._previous = None  # after a replace: (old tree, its pinned buffer) until the new tree's first version
        self._copy_plans = {}  # copy_into: (id of a buffer's arrays, keys) -> [those arrays, sources, their shapes,
        # (the destinations' SameTensors, their BatchedCopy; each None where there is none)]
        _name(prefix, "prefix")
        self._tree = self._open(_buffers.deadline(timeout), NotFound)

    prefix = property(lambda self: self._prefix)
    version = property(lambda self: self._version,
                       doc="The version last acquired (0: none yet); counts again from 1 after a replace().")
    buffers = property(lambda self: self._live().buffers)
    keys = property(lambda self: list(self._live().keys or []),
                    doc="The keys of the tree followed, once a version of it was acquired.")

    def _live(self):
        if self._tree is None:
            raise Unavailable("subscriber is closed")
        return self._tree

    def _open(self, end, error):
        # Nothing wakes a waiter when a name appears, so this one looks
        # again, ever less often: it is a publisher's replace() in progress
        # (two requests long) or a publisher that has not started yet.
        delay = 0.0005
        while True:
            try:
                tree = _Tree.open(self._client, self._prefix)
            except NotFound:
                left = _buffers.seconds_left(end)
                if left == 0:
                    raise error(f"nothing is published under '{self._prefix}' (Client.publisher makes it)") from None
                time.sleep(delay if left is None else min(delay, left))
                delay = min(delay * 2, 0.05)
                continue
            if tree.cuda and self._to == "numpy":
                tree.close()
                raise InvalidArgument(f"'{self._prefix}' is in GPU memory: NumPy reads host memory only; "
                                      "use to='torch'")
            if self._owner is None:
                self._owner = tree.owner_uid
            elif tree.owner_uid != self._owner:
                tree.close()
                raise PermissionDenied(f"'{self._prefix}' is now a tree of uid {tree.owner_uid}, not of uid "
                                       f"{self._owner} whose trees this subscriber follows: not following it "
                                       "(another user took the name; Client.subscriber(owner=...) names "
                                       "whose trees to follow)")
            return tree

    def _follow(self, end):
        """Moves to the tree `prefix` names now; Timeout if none by `end`.
        The old tree's last version stays pinned, and is what latest()
        returns, until the new tree's first version is acquired: a serving
        loop keeps its weights through a publisher's replace()."""
        tree = self._open(end, Timeout)
        old, self._tree = self._tree, tree
        self._drop_previous()
        if self._buffer is not None and self._buffer in old.arrays:
            self._previous = (old, self._buffer)
        else:
            old.close()
        self._version, self._buffer = 0, None
        self._copy_plans.clear()

    def _drop_previous(self):
        previous, self._previous = self._previous, None
        if previous is not None:
            previous[0].close()

    def _wait(self, after, end):
        while True:
            out = ctypes.c_uint64()
            try:
                check(lib.gpb_reader_wait, self._live().reader, after, _buffers.ms_left(end), ctypes.byref(out))
                return out.value
            except NotFound:  # `prefix` was destroyed or replaced
                self._follow(end)
                after = 0

    def wait(self, after: Optional[int] = None, timeout: Optional[float] = None) -> int:
        """Blocks until a version newer than `after` (default: the one last
        acquired) is committed and returns it; Timeout after `timeout`
        seconds (None: no limit, 0: do not wait). After a replace() every
        version of the new tree counts as newer."""
        after = self._version if after is None else _int(after, 0, UINT64_MAX, "after")
        return self._wait(after, _buffers.deadline(timeout))

    def latest(self, timeout: Optional[float] = None, stream: Any = None) -> Dict[str, Any]:
        """Waits up to `timeout` seconds (None: no limit, 0: not at all) for
        a version newer than the one last acquired, pins the newest and
        returns its {key: tensor}, in place, no copy. If nothing newer came,
        that is the version held (the same tensors); Timeout only if nothing
        was ever committed. While a publisher's replace() is under way (the
        new tree made, its first version not yet committed), that is the old
        tree's last version.

        The tensors show the pinned buffer: read them before the next
        latest(), copy_into(), release() or close(). CUDA: read them on
        `stream` (default: the current stream): the next acquire keeps this
        version pinned until the work queued on it is done. Read-only: never
        write them."""
        end = _buffers.deadline(timeout)
        try:
            self._wait(self._version, end)
        except Timeout:
            if self._buffer is not None:  # nothing newer: the version held
                return dict(self._live().arrays_in(self._buffer, self._to))
            if self._previous is not None:  # the old tree's last, through a replace
                return dict(self._previous[0].arrays[self._previous[1]])
            if self._version == 0:
                raise
            # Released since, and nothing newer: the newest again, below.
        try:
            return dict(self._take(stream, end))
        except Timeout:  # replaced as it acquired; the new tree has no version yet
            if self._previous is None:
                raise
            return dict(self._previous[0].arrays[self._previous[1]])

    def _take(self, stream, end):
        """Acquires the newest version; returns the tree's own {key: array}
        of its buffer (not a copy: callers must not change it)."""
        torn = None
        while True:
            tree = self._live()
            # The version held so far stays pinned until `stream` has done
            # the work queued on it (the library releases it then).
            s = _buffers.raw_stream(stream, tree.device_index) if tree.cuda else None
            acquired = gpb_acquired()
            try:
                check(lib.gpb_reader_acquire, tree.reader, s, ctypes.byref(acquired))
            except NotFound:
                # Nothing whole to take: a one-buffer tree whose last write
                # ended uncommitted. Wait for the commit that makes one (a
                # tree that went raises from the wait); twice is an error.
                newest = self._wait(self._version, end)
                if newest == torn:
                    raise
                torn = newest
                continue
            self._version, self._buffer = acquired.version, acquired.buffer
            try:
                arrays = tree.arrays_in(acquired.buffer, self._to)
            except NotFound:  # replaced before its views were listed
                self._follow(end)
                self._wait(0, end)
                continue
            self._drop_previous()
            return arrays

    def copy_into(self, params: Mapping[str, Any], timeout: Optional[float] = None,
                  stream: Any = None) -> Optional[int]:
        """Waits like latest() for a version newer than the one last
        acquired, copies it into `params` ({key: tensor} of the caller's own,
        any subset of the published keys, same shapes; the element type is
        converted) in one batched copy on `stream` (CUDA; default: the
        current stream), and releases it once that copy is done. Returns the
        version, or None if nothing newer came within `timeout` (params
        untouched). One-buffer trees: a copy that a write overlapped is made
        again from the version that write commits (Timeout if none comes)."""
        end = _buffers.deadline(timeout)
        try:
            self._wait(self._version, end)
        except Timeout:
            return None
        keys = tuple(params)
        dsts = list(params.values())
        while True:
            arrays = self._take(stream, end)
            # The sources for these keys in this buffer, found once: an
            # engine copies the same parameters every step.
            # (The plan holds `arrays` itself, so its id names no other dict.)
            plan = self._copy_plans.get((id(arrays), keys))
            if plan is None or plan[0] is not arrays:
                missing = [k for k in keys if k not in arrays]
                if missing:
                    raise InvalidArgument(f"not published under '{self._prefix}': {', '.join(missing)}")
                srcs = [arrays[k] for k in keys]
                if len(self._copy_plans) >= 16:
                    self._copy_plans.clear()
                plan = self._copy_plans[(id(arrays), keys)] = [arrays, srcs, [tuple(s.shape) for s in srcs], None]
            _, srcs, shapes, batched = plan
            tree = self._live()
            # The stream's raw handle: a torch Stream object is made only
            # where torch copies (it costs ~13 us on the default stream).
            h = _buffers.raw_stream(stream, tree.device_index) if tree.cuda else None
            # One launch for the whole tree where it can (the same
            # destinations as last time, checked by address and shape),
            # else a copy per tensor, converting the element type.
            if batched is None or batched[0] is None or not batched[0].holds(dsts):
                _buffers.check_shapes(keys, dsts, shapes)
                batched = plan[3] = ((_buffers.SameTensors.of(dsts), _buffers.BatchedCopy.make(
                    dsts, srcs, tree.device_index)) if tree.cuda else (None, None))
            if batched[1] is not None:
                batched[1].run(h)
            else:
                with _buffers.on_stream(_buffers.cuda_stream(stream, tree.device_index) if tree.cuda else None):
                    _buffers.copy_all(dsts, srcs)
            if tree.buffers > 1 or self._whole(stream, tree):
                self.release(h)
                return self._version
            # A write into the one buffer overlapped the copy: what is there
            # is whole again only once that write is committed.
            self._wait(self._version, end)

    def _whole(self, stream, tree):
        if tree.cuda:
            _buffers.cuda_stream(stream, tree.device_index).synchronize()  # the copy has read the buffer
        return self.unchanged()

    def unchanged(self) -> bool:
        """One-buffer trees: whether no write began since the last acquire,
        so what was read since is that version, whole. Always True with 2+."""
        out = ctypes.c_int32()
        check(lib.gpb_reader_unchanged, self._live().reader, ctypes.byref(out))
        return bool(out.value)

    def release(self, stream: Any = None) -> None:
        """Unpins the version held once the work queued on `stream` (CUDA;
        default: the current stream) is done: the writer may reuse its buffer."""
        if self._buffer is None or self._tree is None:
            return
        tree = self._tree
        s = _buffers.raw_stream(stream, tree.device_index) if tree.cuda else None
        check(lib.gpb_reader_release, tree.reader, s)
        self._buffer = None

    def close(self) -> None:
        """Unpins and stops following; tensors already returned stay mapped."""
        tree, self._tree = self._tree, None
        self._buffer = None
        self._copy_plans = {}
        self._drop_previous()
        if tree is not None:
            tree.close()

    def __enter__(self) -> "Subscriber":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass
