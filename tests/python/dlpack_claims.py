"""A DLPack producer that states what a test chooses: a torch tensor's memory exported as a tensor of another shape or
on another device, as a foreign or faulty producer might. nanobind takes the capsule's DLTensor as it is (it never
calls __dlpack_device__), negative extents included, so this reaches the library's own checks."""

import ctypes

KDLCUDA = 2


class _Device(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _Tensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _Device), ("ndim", ctypes.c_int32), ("dtype", _DataType),
                ("shape", ctypes.POINTER(ctypes.c_int64)), ("strides", ctypes.POINTER(ctypes.c_int64)),
                ("byte_offset", ctypes.c_uint64)]


class _Managed(ctypes.Structure):
    # No deleter: the producer object owns everything and the consumer keeps the producer alive.
    _fields_ = [("dl_tensor", _Tensor), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p)]


_DTYPES = {"torch.float16": (2, 16), "torch.float32": (2, 32), "torch.float64": (2, 64)}

_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]


class Claimed:
    """`tensor`'s memory (kept alive) exported as a C-contiguous CUDA tensor of `shape` (default: the tensor's) on
    device `device_id` (default: the tensor's, 0 for a CPU tensor, which is then claimed to be CUDA memory: only
    for arguments that a check refuses before anything reads them)."""

    def __init__(self, tensor, *, shape=None, device_id=None):
        self.tensor = tensor
        self.shape = tuple(tensor.shape) if shape is None else tuple(shape)
        if device_id is None:
            device_id = tensor.device.index if tensor.device.type == "cuda" else 0
        self.device_id = device_id
        self._exports = []  # each capsule's structures, alive as long as this object

    def __dlpack__(self, **kwargs):
        n = len(self.shape)
        shape = (ctypes.c_int64 * n)(*self.shape)
        strides = (ctypes.c_int64 * n)()
        step = 1
        for i in reversed(range(n)):
            strides[i] = step
            step *= self.shape[i]
        managed = _Managed()
        t = managed.dl_tensor
        t.data = self.tensor.data_ptr()
        t.device = _Device(KDLCUDA, self.device_id)
        t.ndim = n
        code, bits = _DTYPES[str(self.tensor.dtype)]
        t.dtype = _DataType(code, bits, 1)
        t.shape = ctypes.cast(shape, ctypes.POINTER(ctypes.c_int64))
        t.strides = ctypes.cast(strides, ctypes.POINTER(ctypes.c_int64))
        self._exports.append((managed, shape, strides))
        return _capsule_new(ctypes.addressof(managed), b"dltensor", None)

    def __dlpack_device__(self):
        return (KDLCUDA, self.device_id)
