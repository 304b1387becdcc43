"""The Python client on host slots: runs everywhere, CI included."""
import ctypes
import gc
import os
import unittest

import numpy

import gpubroker
from gpubroker import _buffers
from broker import Broker, finish
from peer import stamp, stamped_base

try:
    import torch
except ImportError:  # the tests that need it say so
    torch = None


def fresh_rng():
    return numpy.random.default_rng(int.from_bytes(os.urandom(8), "little"))


class HostTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.broker = Broker("--max-host-bytes", "64MiB")

    @classmethod
    def tearDownClass(cls):
        assert cls.broker.stop() == 0

    def setUp(self):
        self.c = gpubroker.connect(self.broker.socket, name="host-test")

    def tearDown(self):
        self.c.close()

    def leases(self, name):
        return self.c.stat(name).lease_count

    @unittest.skipUnless(os.getuid() == 0 or os.environ.get("GPUBROKER_REQUIRE_ROOT", "0") not in ("", "0"),
                         "needs root to run a peer as another user")
    def test_attach_for_writing_is_refused_where_the_user_may_only_read(self):
        """A user who may only read gets PermissionDenied naming the missing
        'w' from attach() (a view quietly made read-only crashed the process
        at its first write), a read-only view when it asks for one, and the
        same from readonly=None ("whatever I may")."""
        self.c.create("py/read-only", (16,), "float32", mode=0o644, attach=False)
        peer = self.broker.peer("attach-modes", "py/read-only", uid=65534)
        said = [peer.stdout.readline().decode().strip() for _ in range(3)]
        self.assertEqual(finish(peer), 0)
        self.assertTrue(said[0].startswith("readonly=False: PermissionDenied"), said[0])
        self.assertIn("may read slot 'py/read-only' but not write it", said[0])
        self.assertNotIn("_capi", said[0])
        self.assertEqual(said[1:], ["readonly=True: read-only", "readonly=None: read-only"])

    def test_consumer_process_sees_exactly_the_producers_values(self):
        rng = fresh_rng()
        values = rng.standard_normal((257, 33))
        view = self.c.create("py/data", values.shape, "float64")
        a = numpy.asarray(view)
        a[...] = values
        peer = self.broker.peer("echo", "py/data")
        seen = numpy.frombuffer(peer.stdout.read(values.nbytes), dtype=numpy.float64).reshape(values.shape)
        numpy.testing.assert_array_equal(seen, values)  # every element
        reply = rng.standard_normal(values.shape)
        peer.stdin.write(reply.tobytes())
        peer.stdin.flush()
        self.assertEqual(peer.stdout.readline(), b"written\n")
        self.assertEqual(finish(peer), 0)
        numpy.testing.assert_array_equal(a, reply)  # the consumer wrote into our memory

    def test_array_interfaces_are_zero_copy(self):
        view = self.c.create("py/zc", (4, 6), "int32")
        a = numpy.asarray(view)
        self.assertEqual(a.__array_interface__["data"][0], view.data_ptr)
        self.assertEqual(a.dtype, numpy.int32)
        self.assertEqual(a.shape, (4, 6))
        b = numpy.from_dlpack(view) if hasattr(numpy, "from_dlpack") else numpy.asarray(view)
        a[...] = numpy.arange(24, dtype=numpy.int32).reshape(4, 6)
        numpy.testing.assert_array_equal(b, a)  # written through one, read through the other
        self.assertEqual(view.__dlpack_device__(), (1, 0))

    @unittest.skipUnless(torch is not None, "torch is not installed")
    def test_torch_from_dlpack_shares_memory_with_numpy(self):
        view = self.c.create("py/torch", (3, 5), "float32")
        t = torch.from_dlpack(view)
        self.assertEqual(t.data_ptr(), view.data_ptr)
        self.assertEqual(t.dtype, torch.float32)
        a = numpy.asarray(view)
        a[...] = fresh_rng().standard_normal((3, 5))
        self.assertTrue(torch.equal(t, torch.from_numpy(a.copy())))
        t.fill_(7.0)
        self.assertTrue((a == 7.0).all())

    @unittest.skipUnless(torch is not None, "torch is not installed")
    def test_bfloat16_travels_through_dlpack(self):
        view = self.c.create("py/bf16", (8,), "bfloat16")
        with self.assertRaises(AttributeError):
            view.__array_interface__  # no type string for bfloat16
        t = torch.from_dlpack(view)
        self.assertEqual(t.dtype, torch.bfloat16)
        t.copy_(torch.arange(8, dtype=torch.bfloat16))
        again = torch.from_dlpack(self.c.attach("py/bf16"))
        self.assertTrue(torch.equal(again, torch.arange(8, dtype=torch.bfloat16)))

    def test_numpy_of_a_bfloat16_view_is_a_clear_error_not_an_object_array(self):
        view = self.c.create("py/bf16-numpy", (8,), "bfloat16")
        with self.assertRaises(TypeError) as e:
            numpy.asarray(view)
        self.assertIn("bfloat16", str(e.exception))
        self.assertIn("torch.from_dlpack", str(e.exception))

    def test_a_view_is_a_context_manager_that_releases_its_lease(self):
        self.c.create("py/ctx", (4,), "uint8", attach=False)
        with self.c.attach("py/ctx") as view:
            self.assertEqual(self.leases("py/ctx"), 1)
            self.assertEqual(numpy.asarray(view).shape, (4,))
        self.assertEqual(self.leases("py/ctx"), 0)
        with self.assertRaises(TypeError):
            numpy.asarray(view)  # released

    def test_a_state_dict_prefix_with_nothing_under_it_is_not_found(self):
        with self.assertRaises(gpubroker.NotFound) as e:
            self.c.attach_state_dict("py/never-published")
        self.assertIn("py/never-published/", str(e.exception))

    def test_version_and_type_hints(self):
        import pathlib
        import re
        import typing
        pyproject = (pathlib.Path(gpubroker.__file__).parent.parent / "pyproject.toml").read_text()
        self.assertEqual(gpubroker.__version__, re.search(r'^version = "(.*)"', pyproject, re.M).group(1))
        cmake = (pathlib.Path(gpubroker.__file__).parent.parent.parent / "CMakeLists.txt").read_text()
        self.assertIn(f"VERSION {gpubroker.__version__}", cmake)
        self.assertTrue((pathlib.Path(gpubroker.__file__).parent / "py.typed").exists())
        self.assertIs(typing.get_type_hints(gpubroker.Client.attach)["return"], gpubroker.View)
        self.assertIs(typing.get_type_hints(gpubroker.connect)["return"], gpubroker.Client)
        # create(): a View, or with attach=False a SlotInfo, told apart by
        # overloads so that a type checker needs no narrowing.
        if hasattr(typing, "get_overloads"):  # Python >= 3.11
            overloads = typing.get_overloads(gpubroker.Client.create)
            returns = {typing.get_type_hints(o)["attach"]: typing.get_type_hints(o)["return"] for o in overloads}
            self.assertEqual(returns, {typing.Literal[True]: gpubroker.View, typing.Literal[False]: gpubroker.SlotInfo})

    def test_strided_view_into_an_arena(self):
        self.c.create("py/arena", (4096,), "uint8", attach=False)
        view = self.c.create("py/arena/t", (4, 4), "float32", base="py/arena", offset=256,
                             strides=(8, 1))
        a = numpy.asarray(view)
        self.assertEqual(a.strides, (32, 4))
        whole = numpy.asarray(self.c.attach("py/arena"))
        a[...] = numpy.arange(16, dtype=numpy.float32).reshape(4, 4)
        rows = whole[256:256 + 4 * 32].view(numpy.float32).reshape(4, 8)[:, :4]
        numpy.testing.assert_array_equal(rows, a)

    def test_lease_lives_until_the_last_array_is_collected(self):
        self.c.create("py/lease", (16,), "float32", attach=False)
        view = self.c.attach("py/lease")
        a = numpy.asarray(view)
        d = numpy.from_dlpack(view) if hasattr(numpy, "from_dlpack") else None
        del view
        gc.collect()
        self.assertEqual(self.leases("py/lease"), 1)
        del a
        gc.collect()
        self.assertEqual(self.leases("py/lease"), 1 if d is not None else 0)
        del d
        gc.collect()
        self.assertEqual(self.leases("py/lease"), 0)

    @unittest.skipUnless(torch is not None, "torch is not installed")
    def test_lease_lives_while_a_torch_tensor_does(self):
        self.c.create("py/lease-t", (16,), "float32", attach=False)
        t = torch.from_dlpack(self.c.attach("py/lease-t"))
        gc.collect()
        self.assertEqual(self.leases("py/lease-t"), 1)
        t.fill_(1.0)
        del t
        gc.collect()
        self.assertEqual(self.leases("py/lease-t"), 0)

    def test_unconsumed_capsule_returns_its_lease(self):
        self.c.create("py/capsule", (4,), "float32", attach=False)
        capsule = self.c.attach("py/capsule").__dlpack__()
        gc.collect()
        self.assertEqual(self.leases("py/capsule"), 1)
        del capsule
        gc.collect()
        self.assertEqual(self.leases("py/capsule"), 0)

    def test_errors_carry_the_brokers_code(self):
        with self.assertRaises(gpubroker.NotFound) as e:
            self.c.attach("py/missing")
        self.assertEqual(e.exception.code_name, "not_found")
        self.assertIn("py/missing", str(e.exception))
        self.c.create("py/dup", (1,), attach=False)
        with self.assertRaises(gpubroker.AlreadyExists):
            self.c.create("py/dup", (1,))
        with self.assertRaises(gpubroker.InvalidArgument):
            self.c.create("py/../x", (1,))
        with self.assertRaises(ValueError):
            self.c.create("py/x", (1,), "float7")
        with self.assertRaises(gpubroker.ResourceExhausted) as e:
            self.c.create("py/huge", (128 << 20,), "uint8")  # over --max-host-bytes
        self.assertIn("limits.max_host_bytes", str(e.exception))
        with self.assertRaises(gpubroker.Unavailable):
            gpubroker.connect(self.broker.socket + ".missing")
        view = self.c.create("py/cpu-stream", (1,))
        with self.assertRaises(ValueError):
            view.__dlpack__(stream=5)
        with self.assertRaises(BufferError):
            view.__dlpack__(copy=True)

    def test_connect_takes_the_reconnect_and_reply_times(self):
        """connect(reconnect_timeout=, reply_timeout=) reach the library: once
        the broker is gone, a call dials for the time given and says so; 0
        fails at once. Bad values are refused before anything is sent."""
        other = Broker()
        patient = gpubroker.connect(other.socket, reconnect_timeout=0.5, reply_timeout=5)
        hasty = gpubroker.connect(other.socket, reconnect_timeout=0)
        patient.create("py/gone", (4,), attach=False)
        self.assertEqual(other.stop(), 0)
        with self.assertRaisesRegex(gpubroker.Unavailable, "within 500 ms"):
            patient.stat("py/gone")
        with self.assertRaises(gpubroker.Unavailable) as e:
            hasty.stat("py/gone")
        self.assertNotIn("within", str(e.exception), "0: no dialling at all")
        with self.assertRaises(gpubroker.Unavailable):
            patient.lookup("py/gone")  # not answered from the gone broker's registry
        for bad in (-1, 1e9):
            with self.assertRaises(ValueError):
                gpubroker.connect(self.broker.socket, reconnect_timeout=bad)
        with self.assertRaises(TypeError):
            gpubroker.connect(self.broker.socket, reply_timeout="5")
        patient.close()
        hasty.close()

    def test_create_exist_ok_returns_only_the_slot_it_would_have_made(self):
        """A script run twice: exist_ok gives back the first run's slot, and
        only if it is this user's and has the dtype and shape asked for."""
        first = self.c.create("py/again", (4, 8), "float32", exist_ok=True)
        numpy.asarray(first)[...] = 7
        second = self.c.create("py/again", (4, 8), "float32", exist_ok=True)
        self.assertTrue(numpy.array_equal(numpy.asarray(second), numpy.full((4, 8), 7, numpy.float32)))
        info = self.c.create("py/again", (4, 8), "float32", attach=False, exist_ok=True)
        self.assertIsInstance(info, gpubroker.SlotInfo)
        with self.assertRaisesRegex(gpubroker.AlreadyExists, r"shape \(4, 8\), not \(8, 4\)"):
            self.c.create("py/again", (8, 4), "float32", exist_ok=True)
        with self.assertRaisesRegex(gpubroker.AlreadyExists, "dtype float32, not int32"):
            self.c.create("py/again", (4, 8), "int32", exist_ok=True)
        with self.assertRaises(gpubroker.AlreadyExists):
            self.c.create("py/again", (4, 8), "float32")  # without exist_ok: as before

    @unittest.skipUnless(os.getuid() == 0 or os.environ.get("GPUBROKER_REQUIRE_ROOT", "0") not in ("", "0"),
                         "needs root to run a peer as another user")
    def test_exist_ok_never_hands_over_another_users_slot(self):
        """A name another user took first (mode 0666, so anyone could write
        it) is not returned: its owner would read what this user writes."""
        self.c.create("py/squatted", (4,), "float32", mode="0666", attach=False)
        peer = self.broker.peer("exist-ok", "py/squatted", uid=65534)
        said = peer.stdout.readline().decode().strip()
        self.assertEqual(finish(peer), 0)
        self.assertIn("AlreadyExists", said)
        self.assertIn("belongs to uid 0, not to you (uid 65534)", said)

    def test_mode_as_the_cli_writes_it(self):
        self.assertEqual(self.c.create("py/mode-str", (1,), mode="0644", attach=False).mode, 0o644)
        self.assertEqual(self.c.create("py/mode-o", (1,), mode="0o640", attach=False).mode, 0o640)
        for bad in ("0648", "rw-r--r--", "", "0o"):
            with self.assertRaisesRegex(ValueError, "not octal permission bits"):
                self.c.create("py/mode-bad", (1,), mode=bad)
        with self.assertRaises(ValueError):
            self.c.create("py/mode-bad", (1,), mode="01777")

    def test_state_dict_as_numpy(self):
        rng = fresh_rng()
        tensors = {"a": rng.standard_normal((3, 5)), "b": rng.integers(0, 100, (7,), dtype=numpy.int32)}
        self.c.publish_state_dict("py/sd-numpy", tensors)
        got = self.c.attach_state_dict("py/sd-numpy", to="numpy")
        self.assertEqual(list(got), ["a", "b"])
        for k, v in tensors.items():
            self.assertIsInstance(got[k], numpy.ndarray)
            numpy.testing.assert_array_equal(got[k], v)
        with self.assertRaisesRegex(gpubroker.InvalidArgument, "'view', 'torch' or 'numpy'"):
            self.c.attach_state_dict("py/sd-numpy", to="jax")

    def test_public_names_in_tracebacks(self):
        """Errors read as gpubroker.NotFound, not as the private module that defines them."""
        for cls in (gpubroker.Error, gpubroker.NotFound, gpubroker.Unsupported, gpubroker.Client,
                    gpubroker.View, gpubroker.Subscriber):
            self.assertEqual(cls.__module__, "gpubroker", cls)
        import traceback
        try:
            self.c.attach("py/nothing-here")
        except gpubroker.NotFound as e:
            text = "".join(traceback.format_exception_only(type(e), e))
        self.assertTrue(text.startswith("gpubroker.NotFound: not_found: "), text)

    def test_an_update_of_the_wrong_shape_takes_no_buffer(self):
        """Refused before any buffer is begun: on a one-buffer tree the last
        version stays whole and readable (a write begun and given up would
        leave none), and the next update is the next version."""
        base = stamped_base(fresh_seed(), "a")
        pub = self.c.publisher("py/live/shape", stamp(base, 1), buffers=1)
        sub = self.c.subscriber("py/live/shape")
        wrong = dict(stamp(base, 2))
        wrong["layers.0.weight"] = wrong["layers.0.weight"].T.copy()
        with self.assertRaisesRegex(gpubroker.InvalidArgument,
                                    r"'layers\.0\.weight': shape \(17, 33\) where \(33, 17\) is published"):
            pub.update(wrong)
        got = sub.latest(timeout=5)
        self.assertEqual(sub.version, 1)
        self.assertTrue(sub.unchanged())
        for k, v in stamp(base, 1).items():
            numpy.testing.assert_array_equal(got[k], v, k)
        del got
        sub.release()
        self.assertEqual(pub.update(stamp(base, 2)), 2)
        sub.close()
        pub.close(destroy=True)

    def test_a_second_publisher_is_pointed_at_replace(self):
        base = stamped_base(fresh_seed(), "a")
        pub = self.c.publisher("py/live/twice", stamp(base, 1))
        with self.assertRaisesRegex(gpubroker.AlreadyExists, r"replace=True"):
            self.c.publisher("py/live/twice", stamp(base, 1))
        pub.close(destroy=True)

    @unittest.skipIf(torch is None, "needs PyTorch")
    def test_batched_copy_plans_are_made_again_for_changed_tensors(self):
        """The check copy_into and update() make before they use a batched
        copy's plan again (CUDA trees; the check itself is the same on CPU
        tensors): Python's always, torch's C++ one where this torch has it."""
        from same_tensors import check_same_tensors
        check_same_tensors(self, torch, "cpu", _buffers._PythonSameTensors)
        if _buffers._native_checks() is not None:
            check_same_tensors(self, torch, "cpu", _buffers._NativeSameTensors)

    @unittest.skipIf(torch is None, "needs PyTorch")
    def test_engine_recipes(self):
        """docs/python.md's recipes for real engines, on host memory: an engine
        that takes (name, tensor) pairs through load_weights, a plain module's
        load_state_dict, and each batch tagged with the version it ran with.
        Every weight is checked against the trainer's."""
        torch.manual_seed(int.from_bytes(os.urandom(4), "little"))
        trainer = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
        pub = self.c.publisher("py/recipes", trainer.state_dict())

        class Engine:  # the load_weights form: the engine copies each tensor into its own layout
            def __init__(self):
                self.model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
                self.calls = 0

            def load_weights(self, weights):
                params = dict(self.model.named_parameters())
                for name, tensor in weights:
                    params[name].data.copy_(tensor)
                self.calls += 1

            def generate(self, batch):
                with torch.no_grad():
                    return list(self.model(batch))

        engine = Engine()
        plain = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
        client = gpubroker.connect(self.broker.socket, name="engine")
        sub = client.subscriber("py/recipes", timeout=None)
        loaded = 0

        def refresh():
            nonlocal loaded
            try:
                sub.wait(after=loaded, timeout=0)  # anything newer? (no message, no pin)
            except gpubroker.Timeout:
                return
            weights = sub.latest(timeout=0)
            engine.load_weights(weights.items())
            sub.release()
            loaded = sub.version

        def same(module):
            return all(torch.equal(a, b) for a, b in zip(module.state_dict().values(),
                                                         trainer.state_dict().values()))
        batch = torch.randn(3, 16)
        for step in range(1, 4):
            if step > 1:
                with torch.no_grad():
                    for p in trainer.parameters():
                        p.add_(torch.randn_like(p))
                self.assertEqual(pub.update(trainer.state_dict()), step)
            refresh()
            version = loaded
            outputs = engine.generate(batch)
            results = [{"output": o, "policy_version": version} for o in outputs]
            self.assertEqual([r["policy_version"] for r in results], [step] * 3)
            self.assertTrue(same(engine.model), f"version {step}: the engine has the trainer's weights")
            self.assertTrue(torch.equal(torch.stack(outputs), trainer(batch).detach()))
            weights = sub.latest(timeout=0)
            plain.load_state_dict(weights)
            sub.release()
            self.assertTrue(same(plain), f"version {step}: load_state_dict")
        refresh()  # nothing newer: nothing loaded again
        self.assertEqual(engine.calls, 3)
        # An engine that loaded version 4 and refreshes while idle holds no
        # pin: the trainer's next versions never wait for it (two buffers:
        # version 6 goes into version 4's buffer).
        for step in (4, 5, 6):
            self.assertEqual(pub.update(trainer.state_dict(), wait=0), step, "an idle engine kept the trainer waiting")
            if step == 4:
                refresh()
                refresh()
        self.assertEqual((loaded, engine.calls), (4, 4))
        refresh()
        self.assertEqual((loaded, engine.calls), (6, 5))
        sub.close()
        client.close()
        pub.close(destroy=True)

    def test_publish_and_state_dict_arena(self):
        rng = fresh_rng()
        weights = {f"layers.{i}.weight": rng.standard_normal((i + 3, 7)).astype(numpy.float32)
                   for i in range(5)}
        weights["embed"] = rng.integers(0, 1000, size=(11,), dtype=numpy.int64)
        views = self.c.publish_state_dict("py/model", weights)
        self.assertEqual(set(views), set(weights))
        consumer = gpubroker.connect(self.broker.socket, name="consumer")
        for key, value in weights.items():
            got = numpy.asarray(consumer.attach(f"py/model/{key}"))
            numpy.testing.assert_array_equal(got, value)
        infos = {consumer.stat(f"py/model/{k}").allocation_id for k in weights}
        self.assertEqual(len(infos), 1, "one allocation for the whole mapping")
        single = self.c.publish("py/single", weights["embed"])
        numpy.testing.assert_array_equal(numpy.asarray(single), weights["embed"])
        consumer.close()

    def publish_random_model(self, prefix):
        rng = fresh_rng()
        weights = {f"layers.{i}.weight": rng.standard_normal((i + 2, 5)).astype(numpy.float32)
                   for i in (3, 0, 2, 1)}  # published out of name order
        weights["embed"] = rng.integers(0, 1000, size=(13,), dtype=numpy.int64)
        return weights, self.c.publish_state_dict(prefix, weights)

    def check_state_dict_in_peer(self, prefix, to):
        weights, held = self.publish_random_model(prefix)
        before = self.leases(prefix)
        peer = self.broker.peer("state-dict", prefix, to)
        keys = peer.stdout.readline().decode().split()
        self.assertEqual(keys, list(weights), "keys in publishing order")
        for key in keys:
            want = weights[key]
            got = numpy.frombuffer(peer.stdout.read(want.nbytes), dtype=want.dtype).reshape(want.shape)
            numpy.testing.assert_array_equal(got, want)  # every element
        self.assertEqual(self.leases(prefix), before + 1, "all tensors of the arena share one lease")
        self.assertEqual(finish(peer), 0)

    def test_attach_state_dict_as_views_in_another_process(self):
        self.check_state_dict_in_peer("py/sd-views", "view")

    @unittest.skipUnless(torch is not None, "torch is not installed")
    def test_attach_state_dict_as_torch_tensors_in_another_process(self):
        self.check_state_dict_in_peer("py/sd-torch", "torch")

    @unittest.skipUnless(torch is not None, "torch is not installed")
    def test_state_dict_tensors_hold_the_lease_until_collected(self):
        weights, held = self.publish_random_model("py/sd-lease")
        consumer = gpubroker.connect(self.broker.socket, name="consumer")
        base = self.leases("py/sd-lease")
        tensors = consumer.attach_state_dict("py/sd-lease", ["embed", "layers.2.weight"], to="torch")
        self.assertEqual(list(tensors), ["embed", "layers.2.weight"])
        numpy.testing.assert_array_equal(tensors["layers.2.weight"].numpy(), weights["layers.2.weight"])
        self.assertEqual(self.leases("py/sd-lease"), base + 1)
        first = tensors.pop("embed")
        gc.collect()
        self.assertEqual(self.leases("py/sd-lease"), base + 1, "one tensor still holds the arena")
        del tensors, first
        gc.collect()
        self.assertEqual(self.leases("py/sd-lease"), base)
        consumer.close()

    def test_attach_many_is_all_or_none(self):
        weights, held = self.publish_random_model("py/sd-many")
        consumer = gpubroker.connect(self.broker.socket, name="consumer")
        base = self.leases("py/sd-many")
        with self.assertRaises(gpubroker.NotFound) as e:
            consumer.attach_many(["py/sd-many/embed", "py/sd-many/nope"])
        self.assertIn("py/sd-many/nope", str(e.exception))
        gc.collect()
        self.assertEqual(self.leases("py/sd-many"), base, "a failed batch kept a lease")
        views = consumer.attach_many(["py/sd-many/embed", "py/sd-many/layers.0.weight"], readonly=True)
        numpy.testing.assert_array_equal(numpy.asarray(views[0]), weights["embed"])
        self.assertFalse(views[1].writable)
        with self.assertRaises(gpubroker.InvalidArgument):
            consumer.attach_state_dict("py/sd-many", to="jax")
        del views
        gc.collect()
        self.assertEqual(self.leases("py/sd-many"), base, "a rejected call kept a lease")
        consumer.close()

    def test_an_array_outlives_release_of_its_view(self):
        rng = fresh_rng()
        data = rng.integers(0, 2**31, size=4096, dtype=numpy.int32)
        view = self.c.create("py/outlive", data.shape, "int32")
        numpy.asarray(view)[:] = data
        arr = numpy.asarray(view)  # the only other holder of the mapping
        view.release()
        del view
        self.c.destroy("py/outlive")
        gc.collect()
        # Still mapped: every element (a dangling array would crash here).
        numpy.testing.assert_array_equal(arr, data)
        del arr
        gc.collect()

    def test_read_write_after_read_only_is_writable(self):
        self.c.create("py/rw-after-ro", (16,), "uint8", attach=False, mode=0o600)
        ro = self.c.attach("py/rw-after-ro", readonly=True)
        self.assertFalse(ro.writable)
        rw = self.c.attach("py/rw-after-ro")
        self.assertTrue(rw.writable)
        numpy.asarray(rw)[:] = 7
        numpy.testing.assert_array_equal(numpy.asarray(ro), numpy.full(16, 7, numpy.uint8))
        self.c.destroy("py/rw-after-ro")

    def test_names_and_numbers_are_refused_not_cut_or_wrapped(self):
        self.c.create("py/a", (4,), "uint8", attach=False)
        with self.assertRaisesRegex(ValueError, "NUL"):
            self.c.attach("py/a\0b")
        with self.assertRaisesRegex(ValueError, "NUL"):
            self.c.stat("py/a\0")
        with self.assertRaisesRegex(ValueError, "limit is 127"):
            self.c.create("p" * 128, (4,), "uint8")
        with self.assertRaisesRegex(ValueError, "limit is 127"):
            self.c.create("py/v", (4,), "uint8", base="b" * 200)
        with self.assertRaisesRegex(ValueError, "shape entry"):
            self.c.create("py/wrap", (2**64 + 4,), "uint8")
        with self.assertRaisesRegex(ValueError, "mode"):
            self.c.create("py/wrap", (4,), "uint8", mode=2**32 + 0o777)
        with self.assertRaisesRegex(ValueError, "nbytes"):
            self.c.create("py/wrap", (4,), "uint8", nbytes=-1)
        with self.assertRaises(TypeError):
            self.c.create("py/wrap", (4.5,), "uint8")
        with self.assertRaises(gpubroker.NotFound):
            self.c.stat("py/wrap")  # nothing was made by any of the above
        self.c.destroy("py/a")

    def test_list_stat_and_lookup(self):
        self.c.create("py/listed", (2, 2), "float16", attach=False, mode=0o640)
        names = {s.name for s in self.c.list()}
        self.assertIn("py/listed", names)
        info = self.c.lookup("py/listed")
        self.assertEqual((info.dtype, info.shape, info.mode, info.device), ("float16", (2, 2), 0o640, "cpu"))
        self.assertEqual(self.c.stat("py/listed"), info)


WAIT_S = 120  # the longest a live test waits for the other process: a bound on failure, never a pause


# A subscriber in a new pid namespace: ready once it holds version 1; then,
# told to, waits 3 s for nothing newer; then waits for version 2.
PIDNS_WAITER = r"""
import sys, gpubroker
c = gpubroker.connect(sys.argv[1], name="pidns-waiter")
sub = c.subscriber("py/pidns", to="numpy")
sub.latest(timeout=60)
print("ready", flush=True)
sys.stdin.readline()
try:
    sub.wait(timeout=3)
    print("woke early", flush=True)
except gpubroker.Timeout:
    print("timed out", flush=True)
sys.stdin.readline()
print("waiting", flush=True)
print("woke at", sub.wait(timeout=60), flush=True)
"""


def asleep_on_the_registry(native_id, limit=WAIT_S):
    """Polls until thread native_id() of this process sleeps in futex() on a
    word of the broker's registry (its mapping is the memfd the broker names)."""
    import time
    end = time.monotonic() + limit
    while time.monotonic() < end:
        tid = native_id()
        if tid is not None:
            with open(f"/proc/self/task/{tid}/syscall") as f:
                fields = f.read().split()
            if fields and fields[0] == "202":  # futex, x86-64
                address = int(fields[1], 16)
                with open("/proc/self/maps") as f:
                    for line in f:
                        if "gpubroker-registry" in line:
                            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                            if lo <= address < hi:
                                return True
        time.sleep(0.001)  # polling a condition, not a delay
    return False


def fresh_seed():
    return int.from_bytes(os.urandom(8), "little")


def as_numpy(t):
    return t if isinstance(t, numpy.ndarray) else t.numpy()


class LiveHostTest(unittest.TestCase):
    """Publisher and Subscriber on host memory, the publisher in another
    process where it matters."""

    @classmethod
    def setUpClass(cls):
        cls.broker = Broker("--max-host-bytes", "64MiB")

    @classmethod
    def tearDownClass(cls):
        assert cls.broker.stop() == 0

    def setUp(self):
        self.c = gpubroker.connect(self.broker.socket, name="live-test")

    def tearDown(self):
        self.c.close()

    def assert_stamped(self, tensors, base, version):
        """Every element of every tensor is base + version: one version, whole."""
        self.assertEqual(list(tensors), list(base))
        for key, t in tensors.items():
            numpy.testing.assert_array_equal(as_numpy(t), base[key] + version, err_msg=f"{key} of version {version}")

    def start_publisher(self, prefix, buffers, count, kind, layout="a"):
        seed = fresh_seed()
        peer = self.broker.peer("live-publish", prefix, str(buffers), str(seed), str(count), kind, layout)
        self.addCleanup(finish, peer)
        return peer, stamped_base(seed, layout)

    def follow(self, sub, base, until, timeout=WAIT_S):
        """latest() until version `until`, checking every version taken; returns them."""
        seen = []
        while not seen or seen[-1] < until:
            tensors = sub.latest(timeout=timeout)
            self.assertGreaterEqual(sub.version, seen[-1] if seen else 1, "versions only grow")
            self.assert_stamped(tensors, base, sub.version)
            seen.append(sub.version)
        return seen

    def check_publisher_in_another_process(self, kind, to, buffers=2, count=200, layout="a"):
        prefix = f"py/live/{kind}-{buffers}-{layout}"
        peer, base = self.start_publisher(prefix, buffers, count, kind, layout)
        sub = self.c.subscriber(prefix, to=to, timeout=WAIT_S)
        seen = self.follow(sub, base, count)
        self.assertEqual(seen[-1], count)
        self.assertEqual(peer.stdout.readline(), f"published {count}\n".encode())
        self.assertEqual(sub.keys, list(base))
        sub.close()

    def test_subscriber_sees_whole_growing_versions_from_a_numpy_publisher(self):
        self.check_publisher_in_another_process("numpy", "numpy")

    def test_three_buffers_and_large_tensors(self):
        self.check_publisher_in_another_process("numpy", "numpy", buffers=3)
        self.check_publisher_in_another_process("numpy", "numpy", buffers=2, layout="big")

    @unittest.skipUnless(torch is not None, "torch is not installed")
    def test_subscriber_sees_whole_growing_versions_from_a_torch_publisher(self):
        self.check_publisher_in_another_process("cpu", "torch")

    def test_copy_into_gives_exact_values_and_releases(self):
        prefix = "py/live/copy"
        count = 20
        peer, base = self.start_publisher(prefix, 2, count, "numpy")
        self.assertEqual(peer.stdout.readline(), f"published {count}\n".encode())
        sub = self.c.subscriber(prefix, to="numpy")
        with self.assertRaisesRegex(gpubroker.InvalidArgument, "nope"):
            sub.copy_into({"nope": numpy.zeros(1)})
        sub.release()
        # A shape the published one would broadcast into is refused, not filled.
        wide = numpy.full((2,) + base["embed"].shape, -7.0)
        odd = self.c.subscriber(prefix, to="numpy")
        with self.assertRaisesRegex(gpubroker.InvalidArgument,
                                    r"'embed': shape \(2, 129, 8\) where \(129, 8\) is published"):
            odd.copy_into({"embed": wide}, timeout=0)
        self.assertTrue((wide == -7.0).all(), "nothing was copied")
        odd.close()
        sub = self.c.subscriber(prefix, to="numpy")
        params = {k: numpy.zeros_like(v) for k, v in base.items()}
        self.assertEqual(sub.copy_into(params, timeout=WAIT_S), count)
        self.assert_stamped(params, base, count)
        self.assertIsNone(sub.copy_into(params, timeout=0), "nothing newer: nothing copied")
        some = {"embed": numpy.zeros((129, 8), numpy.float64)}  # a subset, converted to float64
        self.assertIsNone(sub.copy_into(some, timeout=0))
        sub.close()
        fresh = self.c.subscriber(prefix, to="numpy")
        self.assertEqual(fresh.copy_into(some, timeout=0), count)
        numpy.testing.assert_array_equal(some["embed"], base["embed"] + count)
        fresh.close()

    def test_a_one_buffer_write_that_ends_uncommitted_leaves_nothing_whole(self):
        """One buffer, written in place: after a write that was given back half
        done, no subscriber takes version 1 (its bytes are half version 2); the
        next commit is whole again."""
        base = stamped_base(fresh_seed(), "a")
        keys = list(base)
        with self.c.publisher("py/live/one-abort", stamp(base, 1), buffers=1) as pub:
            arrays = pub.begin()
            for k in keys[:len(keys) // 2]:
                arrays[k][...] = stamp(base, 2)[k]
            pub.abort()
            sub = self.c.subscriber("py/live/one-abort", to="numpy")
            with self.assertRaises(gpubroker.Timeout):
                torn = sub.latest(timeout=0)
                self.fail(f"latest() returned the torn buffer: {next(iter(torn.values()))}")
            params = {k: numpy.zeros_like(v) for k, v in base.items()}
            self.assertIsNone(sub.copy_into(params, timeout=0), "copy_into copied a torn version")
            self.assertEqual(pub.update(stamp(base, 2)), 2)
            self.assert_stamped(sub.latest(timeout=WAIT_S), base, 2)
            self.assertEqual(sub.version, 2)
            sub.close()

    @unittest.skipUnless(os.getuid() == 0 or os.environ.get("GPUBROKER_REQUIRE_ROOT", "0") not in ("", "0"),
                         "needs root for a pid namespace")
    def test_a_waiter_in_its_own_pid_namespace_sends_no_request(self):
        """A subscriber in a container's pid namespace (the broker's pid means
        nothing there) waits on the futex alone: the broker answers no request
        of it while it waits, and it still wakes at a commit."""
        import subprocess
        import sys
        broker = Broker(metrics=True)
        self.addCleanup(broker.stop)
        c = gpubroker.connect(broker.socket, name="pidns-publisher")
        self.addCleanup(c.close)
        base = stamped_base(fresh_seed(), "a")
        pub = c.publisher("py/pidns", stamp(base, 1), buffers=2)
        waiter = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", PIDNS_WAITER, broker.socket],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.addCleanup(finish, waiter)
        self.assertEqual(waiter.stdout.readline(), "ready\n")
        before = broker.requests()
        waiter.stdin.write("idle\n")
        waiter.stdin.flush()
        self.assertEqual(waiter.stdout.readline(), "timed out\n")  # 3 s of waiting
        idle = broker.requests() - before
        waiter.stdin.write("wake\n")
        waiter.stdin.flush()
        self.assertEqual(waiter.stdout.readline(), "waiting\n")
        pub.update(stamp(base, 2))
        self.assertEqual(waiter.stdout.readline(), "woke at 2\n")
        self.assertEqual(idle, 0, "requests the broker answered while the namespaced subscriber waited idle")
        pub.close()

    def test_a_write_that_overlaps_a_copy_makes_it_again(self):
        """One buffer: a write that begins while copy_into copies (half of it
        written before the copy, half after) tears that copy; copy_into copies
        again from the version that write commits. The overlap is made, not
        hoped for: the copy itself begins the write."""
        from gpubroker import _buffers
        base = stamped_base(fresh_seed(), "a")
        with self.c.publisher("py/live/one-overlap", stamp(base, 1), buffers=1) as pub:
            sub = self.c.subscriber("py/live/one-overlap", to="numpy")
            params = {k: numpy.zeros_like(v) for k, v in base.items()}
            keys, new = list(base), stamp(base, 2)
            real, copies = _buffers.copy_all, []

            def copy_during_a_write(dsts, srcs):
                if not copies:
                    arrays = pub.begin()
                    for k in keys[:len(keys) // 2]:
                        arrays[k][...] = new[k]
                    real(dsts, srcs)  # half version 2, half version 1: torn
                    for k in keys[len(keys) // 2:]:
                        arrays[k][...] = new[k]
                    pub.commit()
                else:
                    real(dsts, srcs)
                copies.append(len(copies) + 1)

            _buffers.copy_all = copy_during_a_write
            try:
                version = sub.copy_into(params, timeout=WAIT_S)
            finally:
                _buffers.copy_all = real
            self.assertEqual(copies, [1, 2], "the torn copy was not made again")
            self.assertEqual(version, 2)
            self.assert_stamped(params, base, 2)
            sub.close()

    def test_one_buffer_copies_are_whole_under_a_busy_writer(self):
        """With one buffer the writer writes in place while readers copy: every
        copy copy_into returns is one version, whole. (Whether a write overlaps
        a copy here is up to the scheduler; the test above makes it happen.)"""
        prefix, count = "py/live/one-busy", 300
        peer, base = self.start_publisher(prefix, 1, count, "numpy", "big")  # copies long enough to overlap
        sub = self.c.subscriber(prefix, to="numpy", timeout=WAIT_S)
        params = {k: numpy.zeros_like(v) for k, v in base.items()}
        copied = [0]
        while copied[-1] < count:
            version = sub.copy_into(params, timeout=WAIT_S)
            self.assertGreater(version, copied[-1])
            self.assert_stamped(params, base, version)
            copied.append(version)
        self.assertEqual(peer.stdout.readline(), f"published {count}\n".encode())
        sub.close()

    def test_wait_runs_out_with_timeout(self):
        prefix = "py/live/timeout"
        peer, base = self.start_publisher(prefix, 2, 3, "numpy")
        self.assertEqual(peer.stdout.readline(), b"published 3\n")
        sub = self.c.subscriber(prefix, to="numpy")
        self.assertEqual(sub.wait(after=0, timeout=0), 3)
        self.assert_stamped(sub.latest(timeout=0), base, 3)
        with self.assertRaises(gpubroker.Timeout) as e:
            sub.wait(timeout=0.05)
        self.assertIsInstance(e.exception, TimeoutError)
        self.assertEqual(e.exception.code_name, "timeout")
        with self.assertRaises(gpubroker.Timeout):
            sub.wait(after=3, timeout=0)
        again = sub.latest(timeout=0.01)  # nothing newer: the version held
        self.assertEqual(sub.version, 3)
        self.assert_stamped(again, base, 3)
        sub.close()
        with self.assertRaises(gpubroker.NotFound):
            self.c.subscriber("py/live/never", to="numpy")
        with self.assertRaises(gpubroker.NotFound):
            self.c.subscriber("py/live/never", to="numpy", timeout=0.02)

    def test_replace_is_followed_without_knowing_the_new_names(self):
        prefix = "py/live/replace"
        count = 30
        peer, base = self.start_publisher(prefix, 2, count, "numpy")
        sub = self.c.subscriber(prefix, to="numpy", timeout=WAIT_S)
        self.follow(sub, base, count)
        self.assertEqual(peer.stdout.readline(), f"published {count}\n".encode())
        seed2, count2 = fresh_seed(), 25
        base2 = stamped_base(seed2, "b")
        peer.stdin.write(f"replace {seed2} {count2}\n".encode())
        peer.stdin.flush()
        versions = []
        while True:
            tensors = sub.latest(timeout=WAIT_S)  # blocks past version `count` of the old tree into the new one
            if list(tensors) == list(base):
                self.fail(f"the old tree again, version {sub.version}")
            self.assert_stamped(tensors, base2, sub.version)
            versions.append(sub.version)
            if sub.version == count2:
                break
        self.assertEqual(versions, sorted(versions))
        self.assertEqual(sub.keys, list(base2))
        self.assertEqual(peer.stdout.readline(), f"replaced {count2}\n".encode())
        old = [s.name for s in self.c.list() if s.name.startswith(prefix + "/")]
        self.assertEqual(sorted(old), sorted(f"{prefix}/{k}" for k in base2), "the old views are gone")
        sub.close()

    def test_replace_while_the_subscriber_waits(self):
        """A subscriber asleep in wait() wakes for the replacement, not at its timeout."""
        prefix = "py/live/replace-wait"
        peer, base = self.start_publisher(prefix, 2, 2, "numpy")
        self.assertEqual(peer.stdout.readline(), b"published 2\n")
        sub = self.c.subscriber(prefix, to="numpy")
        self.assert_stamped(sub.latest(timeout=WAIT_S), base, 2)
        seed2 = fresh_seed()
        result = {}

        def waiter():
            result["version"] = sub.wait(timeout=WAIT_S)

        import threading
        t = threading.Thread(target=waiter)
        t.start()
        peer.stdin.write(f"replace {seed2} 1\n".encode())
        peer.stdin.flush()
        self.assertEqual(peer.stdout.readline(), b"replaced 1\n")
        t.join(timeout=WAIT_S)
        self.assertFalse(t.is_alive())
        self.assertEqual(result["version"], 1)
        self.assert_stamped(sub.latest(timeout=0), stamped_base(seed2, "b"), 1)
        sub.close()

    def test_latest_keeps_the_old_weights_while_a_replace_is_under_way(self):
        """Between a replace's new tree and its first commit, latest(timeout=0)
        serves the old tree's last version, not Timeout."""
        prefix = "py/live/swap"
        base = stamped_base(fresh_seed(), "a")
        pub = self.c.publisher(prefix, stamp(base, 1), buffers=2)
        sub = self.c.subscriber(prefix, to="numpy")
        self.assert_stamped(sub.latest(timeout=WAIT_S), base, 1)
        # A replace half way: the old tree gone, the new one made, nothing committed.
        pub.close(destroy=True)
        base2 = stamped_base(fresh_seed(), "b")
        self.c.publish_state_dict(prefix, stamp(base2, 1), buffers=2)
        for _ in range(3):
            self.assert_stamped(sub.latest(timeout=0), base, 1)
        self.assertEqual(sub.version, 0)  # versions count again in the new tree: none yet
        # Replaced once more, and committed: the subscriber moves to that tree.
        base3 = stamped_base(fresh_seed(), "a")
        with self.c.publisher(prefix, stamp(base3, 1), buffers=2, replace=True):
            self.assert_stamped(sub.latest(timeout=WAIT_S), base3, 1)
            self.assertEqual(sub.version, 1)
        sub.close()

    @unittest.skipUnless(os.getuid() == 0 or os.environ.get("GPUBROKER_REQUIRE_ROOT", "0") not in ("", "0"),
                         "needs root to run a peer as another user")
    def test_a_subscriber_follows_no_tree_of_another_user(self):
        """A replace frees the prefix for a moment; another user who takes it
        must not feed the subscriber its weights."""
        prefix = "py/live/owned"
        base = stamped_base(fresh_seed(), "a")
        pub = self.c.publisher(prefix, stamp(base, 1), buffers=2, mode=0o644)
        sub = self.c.subscriber(prefix, to="numpy")
        self.assert_stamped(sub.latest(timeout=WAIT_S), base, 1)
        pub.close(destroy=True)  # the tree goes, as in a replace, and someone else is first
        seed2 = fresh_seed()
        squatter = self.broker.peer("live-publish", prefix, "2", str(seed2), "3", "numpy", uid=65534)
        self.assertEqual(squatter.stdout.readline(), b"published 3\n")
        with self.assertRaisesRegex(gpubroker.PermissionDenied, "uid 65534, not of uid 0"):
            sub.latest(timeout=WAIT_S)
        with self.assertRaises(gpubroker.PermissionDenied):
            self.c.subscriber(prefix, to="numpy", owner="root")
        theirs = self.c.subscriber(prefix, to="numpy", owner=65534)  # told whose trees to follow
        self.assert_stamped(theirs.latest(timeout=WAIT_S), stamped_base(seed2, "a"), 3)
        theirs.close()
        sub.close()
        self.assertEqual(finish(squatter), 0)

    def test_writer_finds_every_buffer_pinned(self):
        base = stamped_base(fresh_seed(), "a")
        with self.c.publisher("py/live/busy", stamp(base, 1), buffers=2) as pub:
            reader = gpubroker.connect(self.broker.socket, name="reader")
            sub = reader.subscriber("py/live/busy", to="numpy")
            self.assert_stamped(sub.latest(), base, 1)  # pins buffer of version 1
            self.assertEqual(pub.update(stamp(base, 2), wait=0), 2)  # the other buffer
            with self.assertRaises(gpubroker.Busy) as e:
                pub.update(stamp(base, 3), wait=0)  # one pinned, the other the newest
            self.assertIn("pinned", str(e.exception))
            self.assert_stamped(sub.latest(), base, 2)  # the pin moves to version 2
            self.assertEqual(pub.update(stamp(base, 3), wait=0), 3)
            sub.release()
            self.assertEqual(pub.update(stamp(base, 4), wait=0), 4)
            self.assertEqual(pub.update(stamp(base, 5), wait=0), 5)
            self.assert_stamped(sub.latest(), base, 5)
            sub.close()
            reader.close()

    def test_a_blocked_writer_leaves_other_threads_running(self):
        """begin() waits in the library with the GIL released; a release in this thread frees it."""
        import threading
        base = stamped_base(fresh_seed(), "a")
        with self.c.publisher("py/live/gil", stamp(base, 1), buffers=2) as pub:
            reader = gpubroker.connect(self.broker.socket, name="reader")
            sub = reader.subscriber("py/live/gil", to="numpy")
            sub.latest()
            pub.update(stamp(base, 2))
            done = {}
            tid = []
            t = threading.Thread(target=lambda: (tid.append(threading.get_native_id()),
                                                 done.setdefault("v", pub.update(stamp(base, 3), wait=WAIT_S))))
            t.start()
            # The case this test is for: the writer blocked in the library (on
            # a futex word of the registry) while this thread goes on.
            self.assertTrue(asleep_on_the_registry(lambda: tid[0] if tid else None),
                            "the writer never blocked in begin()")
            self.assertNotIn("v", done)
            self.assert_stamped(sub.latest(), base, 2)  # frees version 1's buffer for the writer
            t.join(timeout=WAIT_S)
            self.assertEqual(done.get("v"), 3)
            self.assert_stamped(sub.latest(timeout=WAIT_S), base, 3)
            sub.close()
            reader.close()

    def test_one_buffer_is_written_in_place_and_says_so(self):
        base = stamped_base(fresh_seed(), "a")
        with self.c.publisher("py/live/one", stamp(base, 1), buffers=1) as pub:
            sub = self.c.subscriber("py/live/one", to="numpy")
            tensors = sub.latest()
            self.assertTrue(sub.unchanged())
            back = pub.begin(wait=0)  # no wait for readers: the one buffer, in place
            back["embed"][...] = -1
            self.assertFalse(sub.unchanged(), "a write began since the acquire")
            self.assertTrue((tensors["embed"] == -1).all(), "the reader's tensors are that buffer")
            self.assertEqual(pub.commit(), 2)
            self.assertTrue((sub.latest()["embed"] == -1).all())
            self.assertTrue(sub.unchanged())
            params = {k: numpy.zeros_like(v) for k, v in base.items()}
            pub.update(stamp(base, 3))
            self.assertEqual(sub.copy_into(params, timeout=0), 3)
            self.assert_stamped(params, base, 3)
            sub.close()

    def test_publisher_rules(self):
        base = stamped_base(fresh_seed(), "a")
        pub = self.c.publisher("py/live/rules", stamp(base, 1))
        self.assertEqual((pub.version, pub.buffers, pub.keys), (1, 2, list(base)))
        info = self.c.stat("py/live/rules")
        self.assertEqual(info.buffers, 2)
        self.assertEqual(info.allocation_bytes, 2 * info.buffer_bytes)
        self.assertEqual(self.c.stat("py/live/rules/embed").buffers, 2, "views take their allocation's")
        with self.assertRaises(gpubroker.AlreadyExists):
            self.c.publisher("py/live/rules", stamp(base, 1))
        wrong = dict(stamp(base, 2))
        wrong["embed"] = numpy.zeros((128, 8), numpy.int64)
        with self.assertRaisesRegex(gpubroker.InvalidArgument, "embed"):
            pub.update(wrong)
        del wrong["embed"]
        with self.assertRaisesRegex(gpubroker.InvalidArgument, "replace"):
            pub.update(wrong)
        self.assertEqual(pub.update(stamp(base, 2)), 2, "a refused update leaves nothing begun")
        pub.close()
        self.assertEqual(self.c.lookup("py/live/rules").version, 2, "close() keeps the tree")
        sub = self.c.subscriber("py/live/rules", to="numpy")
        self.assert_stamped(sub.latest(), base, 2)
        base2 = stamped_base(fresh_seed(), "b")
        again = self.c.publisher("py/live/rules", stamp(base2, 1), buffers=3, replace=True)  # a restarted trainer
        self.assertEqual(self.c.stat("py/live/rules").buffers, 3)
        self.assert_stamped(sub.latest(timeout=WAIT_S), base2, 1)
        self.assertEqual(sub.buffers, 3)
        sub.close()
        again.close(destroy=True)
        self.assertEqual([s.name for s in self.c.list() if s.name.startswith("py/live/rules")], [])
        with self.assertRaises(ValueError):
            self.c.publisher("py/live/rules", stamp(base, 1), buffers=9)
        with self.assertRaises(ValueError):
            self.c.create("py/live/nine", (4,), buffers=9)

    def test_live_state_dict_is_not_filled_by_publish_state_dict(self):
        base = stamped_base(fresh_seed(), "b")
        views = self.c.publish_state_dict("py/live/raw", base, buffers=2)
        self.assertEqual(list(views), list(base))
        self.assertEqual(self.c.lookup("py/live/raw").version, 0, "nothing committed")
        for key, view in views.items():
            self.assertFalse(numpy.asarray(view).any(), f"{key} was copied in")
        sub = self.c.subscriber("py/live/raw", to="numpy")
        with self.assertRaises(gpubroker.Timeout):
            sub.latest(timeout=0)
        sub.close()
        plain = self.c.create("py/live/plain", (4,), "float32", buffers=0)
        self.assertEqual((plain.version, plain.slot.buffers), (1, 1))


class AbiTest(unittest.TestCase):
    """The ctypes restatements of the C structs agree with the compiled library."""

    def test_ctypes_layouts_match_the_library(self):
        from gpubroker import _capi
        lib = _capi.lib
        self.assertEqual(lib.gpb_abi_version(), _capi.ABI_VERSION)
        structs, current = {}, None
        for line in lib.gpb_abi_layout().decode().splitlines():
            words = line.split()
            if words[0] == "struct":
                current = structs[words[1]] = {"size": int(words[2]), "fields": {}}
            else:
                current["fields"][words[0]] = (int(words[1]), int(words[2]))
        self.assertEqual(set(structs), {"gpb_error", "gpb_dtype", "gpb_slot_info", "gpb_create_args",
                                        "gpb_acquired", "gpb_copy"})
        for name, layout in structs.items():
            cls = getattr(_capi, name)
            with self.subTest(struct=name):
                self.assertEqual(ctypes.sizeof(cls), layout["size"])
                ours = {f[0]: (getattr(cls, f[0]).offset, getattr(cls, f[0]).size) for f in cls._fields_}
                self.assertEqual(ours, layout["fields"])


if __name__ == "__main__":
    unittest.main()
