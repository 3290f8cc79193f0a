// The lossext._C Python module (limited API, abi3). Importing it runs the static op
// registrations of the whole library; its attributes report what was compiled in, and its
// functions read and set the CPU loops' instruction set (include/lossext/build_info.h).
#include <Python.h>

#include "../include/lossext/build_info.h"

// cpu_isa() -> str: the instruction set the CPU loops run now.
static PyObject* py_cpu_isa(PyObject*, PyObject*) { return PyUnicode_FromString(lossext_cpu_isa_name(lossext_cpu_isa())); }

// cpu_isas() -> tuple[str]: every instruction set this CPU can run, lowest first.
static PyObject* py_cpu_isas(PyObject*, PyObject*) {
  const int best = lossext_cpu_isa_best();
  PyObject* t = PyTuple_New(best + 1);
  if (t == nullptr) return nullptr;
  for (int i = 0; i <= best; ++i) {
    PyObject* s = PyUnicode_FromString(lossext_cpu_isa_name(i));
    if (s == nullptr || PyTuple_SetItem(t, i, s) < 0) {
      Py_DECREF(t);
      return nullptr;
    }
  }
  return t;
}

// set_cpu_isa(level: int) -> bool: False (unchanged) when the CPU cannot run that level.
static PyObject* py_set_cpu_isa(PyObject*, PyObject* arg) {
  const long level = PyLong_AsLong(arg);
  if (level == -1 && PyErr_Occurred()) return nullptr;
  return PyBool_FromLong(lossext_set_cpu_isa(static_cast<int>(level)) == 0);
}

// cpu_isa_env_error() -> str | None: why LOSSEXT_CPU_ISA was not honoured, if it was not.
static PyObject* py_cpu_isa_env_error(PyObject*, PyObject*) {
  const char* e = lossext_cpu_isa_env_error();
  if (e == nullptr) Py_RETURN_NONE;
  return PyUnicode_FromString(e);
}

static PyMethodDef lossext_methods[] = {
    {"cpu_isa", py_cpu_isa, METH_NOARGS, "The instruction set the CPU loops run now."},
    {"cpu_isas", py_cpu_isas, METH_NOARGS, "The instruction sets this CPU can run, lowest first."},
    {"set_cpu_isa", py_set_cpu_isa, METH_O, "Force a level (0 baseline, 1 avx2, 2 avx512); False if unsupported."},
    {"cpu_isa_env_error", py_cpu_isa_env_error, METH_NOARGS, "Why LOSSEXT_CPU_ISA was not honoured, or None."},
    {nullptr, nullptr, 0, nullptr}};

static struct PyModuleDef lossext_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, lossext_methods};

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
