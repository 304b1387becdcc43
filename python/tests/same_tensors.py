"""The changes to the tensors a batched copy reads or writes (copy_into's
destinations, update()'s sources) that must make its plan be made again
(gpubroker._buffers.SameTensors), for test_host.py (CPU tensors) and
test_gpu.py (CUDA tensors): each a list that differs from the first list in
one tensor."""


def changed_lists(torch, device):
    base = [torch.zeros((4, 6), device=device), torch.zeros((5,), device=device),
            torch.zeros((2, 3, 4), device=device), torch.zeros((3, 3), device=device),
            torch.zeros((4,), dtype=torch.complex64, device=device)]
    a = base[0]
    changes = {
        "another shape over the same bytes": (0, a.view(6, 4)),
        "the same bytes with a dimension more": (0, a.view(1, 4, 6)),
        "transposed": (0, a.t()),
        "retyped (same element size)": (0, a.view(torch.int32)),
        "moved (a view one row on)": (0, a[1:]),
        "the first row repeated (same address and shape, stride 0)": (0, a[:1].expand(4, 6)),
        "a new tensor of the same shape": (0, torch.zeros_like(a)),
        "not a torch tensor": (0, a.cpu().numpy()),
        "a square one transposed (strides alone differ)": (3, base[3].t()),
        "conjugated (a bit, no other change)": (4, base[4].conj()),
        "negated (a bit, no other change)": (4, base[4]._neg_view()),
    }
    if device != "cpu":
        changes["on the host"] = (0, a.cpu())
    out = {what: base[:i] + [t] + base[i + 1:] for what, (i, t) in changes.items()}
    out["one tensor fewer"] = base[:-1]
    return base, out


def check_same_tensors(test, torch, device, kind):
    """`kind` (a SameTensors class) made for a list holds for that list and
    no changed one."""
    base, changed = changed_lists(torch, device)
    d = kind(base)
    test.assertTrue(d.holds(list(base)), f"{kind.__name__}: the same tensors")
    for what, dsts in changed.items():
        test.assertFalse(d.holds(dsts), f"{kind.__name__}: {what}")
