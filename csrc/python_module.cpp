// The lossext._C Python module (limited API, abi3). Importing it runs the static op
// registrations of the whole library; its attributes report what was compiled in.
#include <Python.h>

#include "../include/lossext/build_info.h"

static struct PyModuleDef lossext_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* m = PyModule_Create(&lossext_module);
  if (m == nullptr) return nullptr;
  if (PyModule_AddIntConstant(m, "with_cuda", lossext_with_cuda()) < 0 ||
      PyModule_AddStringConstant(m, "cuda_arch_list", lossext_cuda_arch_list()) < 0 ||
      PyModule_AddStringConstant(m, "version", lossext_version()) < 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
