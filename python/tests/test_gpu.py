"""The Python client on CUDA slots: needs a GPU, PyTorch and CuPy (the device
machine); skips with the reason elsewhere."""
import gc
import os
import unittest

import gpubroker
from gpubroker import _buffers
from broker import Broker, finish
from peer import stamped_base

try:
    import torch
    HAVE_CUDA = torch.cuda.is_available()
    WHY = "" if HAVE_CUDA else "torch sees no CUDA device"
except ImportError:
    torch, HAVE_CUDA, WHY = None, False, "torch is not installed"
try:
    import cupy
except ImportError:
    cupy = None
if os.environ.get("GPUBROKER_REQUIRE_GPU", "0") not in ("", "0"):  # a GPU run: no skip (docs/testing.md)
    if not HAVE_CUDA:
        raise RuntimeError(f"GPUBROKER_REQUIRE_GPU is set, but {WHY}")
    if cupy is None:
        raise RuntimeError("GPUBROKER_REQUIRE_GPU is set, but CuPy is not installed")


def seed():
    return int.from_bytes(os.urandom(4), "little")


def randn(shape, s, dtype):
    """Values known from the seed alone, so each side checks independently."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(s)).to(dtype)


@unittest.skipUnless(HAVE_CUDA, WHY)
class CudaTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.broker = Broker()

    @classmethod
    def tearDownClass(cls):
        assert cls.broker.stop() == 0

    def setUp(self):
        self.c = gpubroker.connect(self.broker.socket, name="cuda-test")

    def tearDown(self):
        self.c.close()

    def round_trip(self, backend, how, dtype=torch.float32 if torch else None):
        name = f"cuda/{backend}/{how}/{str(dtype)[6:]}"
        shape = (1024, 1000)
        view = self.c.create(name, shape, dtype, "cuda:0", backend=backend)
        t = torch.as_tensor(view, device="cuda:0") if dtype != torch.bfloat16 else torch.from_dlpack(view)
        self.assertEqual(t.data_ptr(), view.data_ptr)
        s1, s2 = seed(), seed()
        t.copy_(randn(shape, s1, dtype).cuda())
        torch.cuda.synchronize()
        peer = self.broker.peer("check-torch", name, str(s1), str(s2), how)
        line = peer.stdout.readline().decode().strip()
        self.assertEqual(finish(peer), 0, line)
        self.assertEqual(line, "ok 0")
        self.assertTrue(torch.equal(t.cpu(), randn(shape, s2, dtype)), "the consumer's values are not here")

    def test_two_processes_through_as_tensor(self):
        for backend in ("cuda_vmm", "cuda_ipc"):
            with self.subTest(backend=backend):
                self.round_trip(backend, "as_tensor")

    def test_two_processes_through_from_dlpack(self):
        for backend in ("cuda_vmm", "cuda_ipc"):
            with self.subTest(backend=backend):
                self.round_trip(backend, "from_dlpack")
                self.round_trip(backend, "from_dlpack", torch.bfloat16)

    @unittest.skipUnless(cupy is not None, "cupy is not installed")
    def test_two_processes_through_cupy(self):
        for backend in ("cuda_vmm", "cuda_ipc"):
            with self.subTest(backend=backend):
                self.round_trip(backend, "cupy")
        view = self.c.create("cuda/cupy-ptr", (64,), "float32", "cuda:0")
        self.assertEqual(cupy.asarray(view).data.ptr, view.data_ptr)

    def test_readme_snippet_in_two_processes(self):
        shape, s1, s2 = (4096, 4096), seed(), seed()
        with gpubroker.connect(self.broker.socket) as c:
            c.create("weights/layer0", shape=shape, dtype="bfloat16", device="cuda:0")
            t = torch.as_tensor(c.attach("weights/layer0"), device="cuda")   # zero copy
            t.copy_(randn(shape, s1, torch.bfloat16).cuda())
            torch.cuda.synchronize()
            peer = self.broker.peer("snippet", "weights/layer0")
            line = peer.stdout.readline().decode().strip()
            self.assertEqual(finish(peer), 0)
            self.assertEqual(line, "torch.bfloat16 (4096, 4096) cuda:0")
            # Every element, both ways: the other process checks s1 and writes s2.
            peer = self.broker.peer("check-torch", "weights/layer0", str(s1), str(s2), "from_dlpack")
            line = peer.stdout.readline().decode().strip()
            self.assertEqual(finish(peer), 0, line)
            self.assertEqual(line, "ok 0")
            self.assertTrue(torch.equal(t.cpu(), randn(shape, s2, torch.bfloat16)), "the other process's values are not here")

    def test_lease_lives_while_a_cuda_tensor_does(self):
        self.c.create("cuda/lease", (256,), "float32", "cuda:0", attach=False)
        t = torch.as_tensor(self.c.attach("cuda/lease"), device="cuda:0")
        gc.collect()
        self.assertEqual(self.c.stat("cuda/lease").lease_count, 1)
        t.fill_(2.0)
        del t
        gc.collect()
        self.assertEqual(self.c.stat("cuda/lease").lease_count, 0)

    def test_publish_state_dict_on_the_gpu(self):
        sd = {f"l{i}.w": torch.randn(i + 5, 33, device="cuda:0") for i in range(20)}
        sd["bf"] = torch.randn(7, device="cuda:0").to(torch.bfloat16)
        self.c.publish_state_dict("cuda/model", sd)
        other = gpubroker.connect(self.broker.socket, name="reader")
        for k, v in sd.items():
            got = torch.from_dlpack(other.attach(f"cuda/model/{k}"))
            self.assertTrue(torch.equal(got, v), k)
        other.close()

    def test_attach_state_dict_to_torch_in_another_process(self):
        s = seed()
        sd = {f"layer{i}.weight": randn((i + 3, 129), s + i, torch.float32).to("cuda:0") for i in range(12)}
        sd["norm"] = randn((64,), s + 99, torch.float16).to("cuda:0")
        held = self.c.publish_state_dict("cuda/sd", sd)
        before = self.c.stat("cuda/sd").lease_count
        peer = self.broker.peer("state-dict", "cuda/sd", "torch")
        keys = peer.stdout.readline().decode().split()
        self.assertEqual(keys, list(sd))
        for k in keys:
            want = sd[k].cpu()
            got = torch.frombuffer(bytearray(peer.stdout.read(want.numel() * want.element_size())),
                                   dtype=want.dtype).reshape(want.shape)
            self.assertTrue(torch.equal(got, want), k)  # every element
        self.assertEqual(self.c.stat("cuda/sd").lease_count, before + 1, "one lease for the whole arena")
        self.assertEqual(finish(peer), 0)
        del held

    def test_dlpack_stream_argument(self):
        view = self.c.create("cuda/stream", (8,), "float32", "cuda:0")
        with self.assertRaises(ValueError):
            view.__dlpack__(stream=0)
        s = torch.cuda.Stream()
        t = torch.from_dlpack(view.__dlpack__(stream=s.cuda_stream))
        self.assertEqual(t.data_ptr(), view.data_ptr)
        self.assertEqual(view.__dlpack_device__(), (2, 0))


@unittest.skipUnless(HAVE_CUDA, WHY)
class LiveCudaTest(unittest.TestCase):
    """Publisher and Subscriber on GPU memory, the publisher in another process."""

    @classmethod
    def setUpClass(cls):
        cls.broker = Broker()

    @classmethod
    def tearDownClass(cls):
        assert cls.broker.stop() == 0

    def setUp(self):
        self.c = gpubroker.connect(self.broker.socket, name="live-cuda-test")
        self.stream = torch.cuda.Stream()  # the consumer's own stream, not the default one

    def tearDown(self):
        self.c.close()

    def wrong_elements(self, tensors, base, version):
        """How many elements are not base + version, counted on the consumer's
        stream (the .item() waits for it)."""
        self.assertEqual(list(tensors), list(base))
        with torch.cuda.stream(self.stream):
            wrong = sum(int((t != base[k] + version).sum().item()) for k, t in tensors.items())
        for t in tensors.values():
            self.assertTrue(t.is_cuda)
        return wrong

    def count_batched_runs(self):
        """A list that gets an entry for every BatchedCopy.run, until the test ends."""
        runs = []
        batched_run = _buffers.BatchedCopy.run

        def counted(plan, stream):
            runs.append(plan)
            batched_run(plan, stream)
        self.addCleanup(setattr, _buffers.BatchedCopy, "run", batched_run)
        _buffers.BatchedCopy.run = counted
        return runs

    def start(self, prefix, buffers, count):
        seed = int.from_bytes(os.urandom(8), "little")
        peer = self.broker.peer("live-publish", prefix, str(buffers), str(seed), str(count), "cuda")
        self.addCleanup(finish, peer)
        return peer, {k: torch.from_numpy(v).to("cuda:0") for k, v in stamped_base(seed, "a").items()}

    def follow(self, sub, base, until):
        seen = [0]
        while seen[-1] < until:
            tensors = sub.latest(timeout=60, stream=self.stream)
            self.assertGreaterEqual(sub.version, seen[-1], "versions only grow")
            self.assertEqual(self.wrong_elements(tensors, base, sub.version), 0, f"version {sub.version}")
            seen.append(sub.version)
        return seen[1:]

    def test_stamped_versions_from_a_publisher_process(self):
        for buffers in (2, 3):
            with self.subTest(buffers=buffers):
                prefix, count = f"cuda/live/{buffers}", 200
                peer, base = self.start(prefix, buffers, count)
                sub = self.c.subscriber(prefix, timeout=60)
                self.assertEqual(self.follow(sub, base, count)[-1], count)
                self.assertEqual(peer.stdout.readline(), f"published {count}\n".encode())
                with torch.cuda.stream(self.stream):  # made where they are copied into
                    params = {k: torch.zeros_like(v) for k, v in base.items()}
                fresh = self.c.subscriber(prefix)
                self.assertEqual(fresh.copy_into(params, timeout=60, stream=self.stream), count)
                self.assertEqual(self.wrong_elements(params, base, count), 0)
                fresh.close()
                sub.close()

    def test_stamped_versions_on_the_default_stream(self):
        """latest() and copy_into() with no stream given, PyTorch's default
        stream, as most engines run: each version read on that stream stays
        pinned until the stream has read it, so every one is whole."""
        prefix, count = "cuda/live/default-stream", 200
        peer, base = self.start(prefix, 2, count)
        sub = self.c.subscriber(prefix, timeout=60)
        seen = 0
        while seen < count:
            tensors = sub.latest(timeout=60)
            self.assertGreaterEqual(sub.version, seen, "versions only grow")
            seen = sub.version
            wrong = sum(int((t != base[k] + seen).sum().item()) for k, t in tensors.items())
            self.assertEqual(wrong, 0, f"version {seen}")
        self.assertEqual(peer.stdout.readline(), f"published {count}\n".encode())
        params = {k: torch.zeros_like(v) for k, v in base.items()}
        fresh = self.c.subscriber(prefix)
        self.assertEqual(fresh.copy_into(params, timeout=60), count)
        self.assertEqual(sum(int((t != base[k] + count).sum().item()) for k, t in params.items()), 0)
        fresh.close()
        sub.close()

    def test_batched_copy_plans_are_made_again_for_changed_tensors(self):
        """On CUDA tensors, both ways; torch's C++ check must be there from
        torch 2.2 on (it is what keeps copy_into and update() near their
        copy's time)."""
        from same_tensors import check_same_tensors
        check_same_tensors(self, torch, "cuda:0", _buffers._PythonSameTensors)
        if tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 2):
            self.assertIsNotNone(_buffers._native_checks(), f"torch {torch.__version__}: no C++ check of the tensors")
        if _buffers._native_checks() is not None:
            check_same_tensors(self, torch, "cuda:0", _buffers._NativeSameTensors)

    def test_copy_into_is_one_launch_where_it_can_be_and_exact_either_way(self):
        """copy_into on the default stream and on the consumer's own: one
        kernel launch for the whole tree while every destination matches
        its source (BatchedCopy.run counted), remade when a destination's
        storage changes, and a copy per tensor, converting, when one has
        another dtype or is strided; a destination of another shape over the
        same bytes is refused, named. One new version per round, every
        element of every destination checked."""
        prefix = "cuda/live/copy"
        peer, base = self.start(prefix, 2, 1)
        self.assertEqual(peer.stdout.readline(), b"published 1\n")
        sub = self.c.subscriber(prefix, timeout=60)
        params = {k: torch.zeros_like(v) for k, v in base.items()}
        runs = self.count_batched_runs()
        key = "layers.0.weight"  # float32 (33, 17)
        for step in range(2, 26):
            if step % 5 == 0:  # new storage for one destination: the plan is remade
                params["embed"] = torch.zeros_like(base["embed"])
            if step % 8 == 3:
                params[key] = torch.zeros(base[key].shape, dtype=torch.float64, device="cuda:0")
            elif step % 8 == 4:
                params[key] = torch.zeros(tuple(reversed(base[key].shape)), device="cuda:0").t()
            elif step % 8 == 5:
                params[key] = torch.zeros_like(base[key])
            one_launch = params[key].dtype == torch.float32 and params[key].is_contiguous()
            peer.stdin.write(b"more 1\n")
            peer.stdin.flush()
            self.assertEqual(peer.stdout.readline(), f"published {step}\n".encode())
            before = len(runs)
            stream = None if step % 2 else self.stream
            if step % 8 == 7:  # another shape over the same bytes (same address and count): refused, named
                other = params[key].view(tuple(reversed(base[key].shape)))
                with self.assertRaisesRegex(gpubroker.InvalidArgument, r"'layers\.0\.weight': shape \(17, 33\) "
                                            r"where \(33, 17\) is published"):
                    sub.copy_into({**params, key: other}, timeout=60, stream=stream)
                self.assertEqual(len(runs), before, f"step {step}: nothing copied")
                continue
            self.assertEqual(sub.copy_into(params, timeout=60, stream=stream), step)
            self.assertEqual(len(runs) - before, 1 if one_launch else 0, f"step {step}: batched or not")
            torch.cuda.synchronize()
            for k, t in params.items():
                wrong = int((t.double() != base[k].double() + step).sum().item())
                self.assertEqual(wrong, 0, f"step {step}, '{k}' ({t.dtype}, contiguous {t.is_contiguous()})")
        sub.close()

    def test_update_is_one_launch_for_the_same_sources_and_exact_either_way(self):
        """A trainer's update() from its own tensors, changed in place each
        step: one kernel launch a version once the same sources came twice
        (BatchedCopy.run counted), none where a source was replaced that
        step, has another dtype (converted) or is strided, nor for a state
        dict made anew at other addresses; a source of another shape is
        refused, named, and nothing is published. Sources replaced stay
        alive and are set to -1 every step: a plan still reading one would
        publish it. Some steps copy on a stream of their own, with the
        sources written on the current stream behind a long kernel: the copy
        must wait for them. Every element of every version read back by a
        subscriber in this process."""
        prefix = "cuda/live/update"
        base = {k: torch.from_numpy(v).to("cuda:0") for k, v in stamped_base(seed(), "a").items()}
        state = {k: v + 1 for k, v in base.items()}
        pub = self.c.publisher(prefix, state, buffers=2)
        sub = self.c.subscriber(prefix, timeout=60)
        runs = self.count_batched_runs()
        key = "layers.0.weight"  # float32 (33, 17)
        # step: (what replaces state[key] first, or None; launches expected)
        steps = {8: ("float64", 0), 9: (None, 0), 10: ("float32", 0), 11: (None, 1), 13: ("strided", 0),
                 14: (None, 0), 15: ("float32", 0), 17: ("all anew", 0)}
        on_side_stream = {5, 6, 9, 12, 16}  # batched (5, 6, 12, 16) and not (9)
        stale = []  # the sources replaced, kept alive: their memory holds -1, never a stamped value
        for step in range(2, 20):
            change, launches = steps.get(step, (None, 1))
            if change == "all anew":
                stale.extend(state.values())
                state = {k: torch.empty_like(t) for k, t in state.items()}
            elif change is not None:
                stale.append(state[key])
            if change == "float64":
                state[key] = torch.zeros(base[key].shape, dtype=torch.float64, device="cuda:0")
            elif change == "float32":
                state[key] = torch.zeros_like(base[key])
            elif change == "strided":
                state[key] = torch.zeros(tuple(reversed(base[key].shape)), device="cuda:0").t()
            for t in stale:
                t.fill_(-1)
            side = step in on_side_stream
            if side:
                torch.cuda._sleep(20_000_000)  # ~10 ms on the current stream before the sources are written
            for k, t in state.items():
                t.copy_(base[k] + step)
            before = len(runs)
            self.assertEqual(pub.update(state, stream=self.stream if side else None), step)
            self.assertEqual(len(runs) - before, launches, f"step {step}: batched or not")
            tensors = sub.latest(timeout=60)
            self.assertEqual(sub.version, step)
            for k, t in tensors.items():
                wrong = int((t.double() != base[k].double() + step).sum().item())
                self.assertEqual(wrong, 0, f"step {step}, '{k}'{' (a stream of its own)' if side else ''}")
        other = dict(state)
        other[key] = state[key].view(tuple(reversed(base[key].shape)))
        with self.assertRaisesRegex(gpubroker.InvalidArgument,
                                    r"'layers\.0\.weight': shape \(17, 33\) where \(33, 17\) is published"):
            pub.update(other)
        self.assertEqual(pub.version, 19)
        self.assertEqual(pub.update(state), 20)
        sub.close()
        pub.close(destroy=True)

    def test_replace_on_the_gpu_is_followed(self):
        prefix = "cuda/live/replace"
        peer, base = self.start(prefix, 2, 20)
        sub = self.c.subscriber(prefix, timeout=60)
        self.follow(sub, base, 20)
        self.assertEqual(peer.stdout.readline(), b"published 20\n")
        seed2 = int.from_bytes(os.urandom(8), "little")
        base2 = {k: torch.from_numpy(v).to("cuda:0") for k, v in stamped_base(seed2, "b").items()}
        peer.stdin.write(f"replace {seed2} 10\n".encode())
        peer.stdin.flush()
        while True:
            tensors = sub.latest(timeout=60, stream=self.stream)
            if list(tensors) == list(base2):
                self.assertEqual(self.wrong_elements(tensors, base2, sub.version), 0, f"version {sub.version}")
                if sub.version == 10:
                    break
        self.assertEqual(peer.stdout.readline(), b"replaced 10\n")
        sub.close()


if __name__ == "__main__":
    unittest.main()
