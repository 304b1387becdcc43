"""The changes to the tensors a batched copy reads or writes (copy_into's
destinations, update()'s sources) that must make its plan be made again
(gpubroker._buffers.SameTensors), for test_host.py (CPU tensors) and
test_gpu.py (CUDA tensors): each a list that differs from the first list in
one tensor."""


def changed_lists(torch, device):
    base = [torch.zeros((4, 6), device=device), torch.zeros((5,), device=device),
            torch.zeros((2, 3, 4), device=device)]
    a = base[0]
    changes = {
        "another shape over the same bytes": a.view(6, 4),
        "the same bytes with a dimension more": a.view(1, 4, 6),
        "transposed": a.t(),
        "retyped (same element size)": a.view(torch.int32),
        "moved (a view one row on)": a[1:],
        "a new tensor of the same shape": torch.zeros_like(a),
        "not a torch tensor": a.cpu().numpy(),
    }
    if device != "cpu":
        changes["on the host"] = a.cpu()
    out = {what: base[:0] + [t] + base[1:] for what, t in changes.items()}
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
