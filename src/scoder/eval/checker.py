"""The judge that runs inside the sandbox, next to the sample: compares what the sample's function
returns with what it should return.

This module is not imported in the sandbox: its source is compiled once on the host, shipped as
marshal data inside every test statement that needs it (`scoder.eval.sandboxed`), and executed
there afresh, for that statement alone, into a namespace of its own. So it is written as ordinary
top-level code with four rules:

- It first copies what it needs out of `__builtins__` (reset by the harness before each statement,
  and not yet touched by the sample in this one): neither a sample that rebinds `type` or `len` in
  its module nor one that patches `builtins` when called can change how its results are judged.
  Nothing a sample does while one statement calls it (rebinding the checker, say) reaches the next
  statement, which builds its own.
- It imports nothing from scoder, and nothing at the top but `sys` (which every interpreter has
  loaded): it runs once per test statement. What only `emit` needs is imported inside `emit`.
- An entry point uses only what stands above it in this file: a statement gets the module only as
  far as the `def` of the entry point it calls (guard, then check, then emit), so that a guard
  costs no more than a guard needs.
- Everything it returns or raises must read the same in process (the unit tests import it) and in
  the sandbox.

Three entry points: `guard(f)` wraps a function so that what it returns must be plain data (a
returned object whose `__eq__` says yes to anything fails); `check(f, inputs, expected, atol,
oracle)` calls `f` on every input and compares each output as EvalPlus does; `emit(f, inputs,
oracle, chunk, size)` computes the canonical solution's outputs and writes them to stderr, the
sandbox's only channel back (read by `scoder.eval.mbppplus`).
"""

import sys as _sys

type_, len_, isinstance_, abs_, set_, range_, repr_ = type, len, isinstance, abs, set, range, repr
all_, zip_, str_, int_, float_, bool_, bytes_ = all, zip, str, int, float, bool, bytes
list_, tuple_, dict_, frozenset_, complex_ = list, tuple, dict, frozenset, complex
max_, sum_, round_, sorted_ = max, sum, round, sorted
BaseException_, AssertionError_, TypeError_ = BaseException, AssertionError, TypeError
scalars = {type_(None), bool_, int_, float_, complex_, str_, bytes_}
sequences = {list_, tuple_, set_, frozenset_}
dicts = {dict_}
number = (bool_, int_, float_, complex_)
collections = _sys.modules.get("collections")
if collections is not None:  # in the sandbox, only the sample can have imported it
    for name in ("OrderedDict", "Counter", "defaultdict"):
        kind = collections.__dict__.get(name)
        if type_(kind) is type_ and dict_ in kind.__mro__:
            dicts.add(kind)
    if type_(collections.__dict__.get("deque")) is type_:
        sequences.add(collections.__dict__["deque"])
items = dict_.items
loads = _sys.modules["marshal"].loads  # loaded by the harness (and by any interpreter's importlib)


def plain(x):
    """Only builtin data all the way down: nothing whose `==` the sample wrote."""
    kind = type_(x)
    if kind in scalars:
        return True
    if kind in sequences:
        return all_(plain(v) for v in x)
    if kind in dicts:
        return all_(plain(k) and plain(v) for k, v in items(x))
    return False


def guard(fn):
    def guarded(*args, **kwargs):
        out = fn(*args, **kwargs)
        if not plain(out):
            raise AssertionError_(f"returned a {type_(out).__name__}, not plain data")
        return out

    return guarded


def is_floats(x):
    if type_(x) is float_:
        return True
    if isinstance_(x, (list_, tuple_)) and len_(x):
        return all_(type_(v) is float_ for v in x)
    return False


def close(a, b, atol):
    # numpy.allclose: |a - b| <= atol + rtol * |b|, rtol 1e-7, nan never close
    if isinstance_(a, number) and isinstance_(b, number):
        if a == b:
            return True
        d = abs_(a - b)
        return d == d and d <= atol + 1e-07 * abs_(b)
    if isinstance_(a, (list_, tuple_)) and isinstance_(b, (list_, tuple_)):
        return len_(a) == len_(b) and all_(close(x, y, atol) for x, y in zip_(a, b))
    return False


def surface_area(base_edge, height):
    # Mbpp/581: the canonical solution reads "height" one way, the task's asserts another
    slant = ((base_edge / 2) ** 2 + height**2) ** 0.5
    return round_(base_edge**2 + 4 * (base_edge * slant) / 2)


def digit_distance(a, b):
    # Mbpp/558: numbers of different lengths, compared padded with zeros
    a, b = str_(a), str_(b)
    width = max_(len_(a), len_(b))
    return sum_(abs_(int_(x) - int_(y)) for x, y in zip_(a.zfill(width), b.zfill(width)))


def same(out, exp, atol, oracle, blob):
    """Whether `out` counts as `exp` (EvalPlus's comparison); `blob` is the input's marshal data,
    for the oracles that recompute the answer from it."""
    if oracle == "not_none":
        return out == exp if type_(out) is bool_ else exp == (out is not None)
    if not plain(out):
        return False
    if oracle == "set_eq":
        return set_(out) == exp
    exact = out == exp
    if oracle == "any":
        exact = True
    elif oracle == "or_zero":
        exact = exact or out == 0
    elif oracle == "surface_area":
        exact = exact or abs_(out - surface_area(*loads(blob))) <= atol
    elif oracle == "digit_distance":
        exact = exact or out == digit_distance(*loads(blob))
    tol = atol or (1e-06 if is_floats(exp) else 0)
    if exact or not tol:
        return exact
    if type_(out) is not type_(exp):
        return False
    if isinstance_(exp, (list_, tuple_)) and len_(out) != len_(exp):
        return False
    return close(out, exp, tol)


def check(fn, inputs, expected, atol, oracle):
    """`fn` on every input (marshal data, loaded afresh for each call) against the expected outputs
    (marshal data, or a function returning them when computed in the sample's own process)."""
    want = loads(expected) if type_(expected) is bytes_ else expected()
    for i in range_(len_(inputs)):
        out = fn(*loads(inputs[i]))
        try:
            ok = same(out, want[i], atol, oracle, inputs[i])
        except BaseException_ as e:
            ok, why = False, f" ({type_(e).__name__})"
        else:
            why = ""
        if not ok:
            shown = repr_(out)[:120] if plain(out) else "a " + type_(out).__name__
            raise AssertionError_(f"input {i}: got {shown}, expected {repr_(want[i])[:120]}{why}")
    return True


def enc(v, dumps):
    """A value as tagged JSON (the host's `decode_tagged` reads it back); `dumps` is json.dumps,
    which orders the elements of sets."""
    kind = type_(v)
    if v is None or kind in (bool_, int_, float_, str_):
        return v
    if kind is list_:
        return [enc(x, dumps) for x in v]
    if kind is tuple_:
        return {"t": [enc(x, dumps) for x in v]}
    if isinstance_(v, (set_, frozenset_)):
        tag = "s" if isinstance_(v, set_) else "f"
        return {tag: sorted_((enc(x, dumps) for x in v), key=lambda e: dumps(e, sort_keys=True))}
    if isinstance_(v, dict_):
        return {"d": [[enc(k, dumps), enc(x, dumps)] for k, x in items(v)]}
    if kind is complex_:
        return {"c": [v.real, v.imag]}
    if kind is bytes_:
        return {"b": v.hex()}
    raise TypeError_(f"cannot compare a {kind.__module__}.{kind.__qualname__} outside its process")


def emit(fn, inputs, oracle, chunk, size):
    """The canonical solution's outputs on every input, tagged JSON, compressed, one `size`-long
    chunk of it written to fd 2 between `@@scoder` marks (with the chunk count, a digest of the
    whole and the seconds the solution took)."""
    # only here: a guard or check statement must not pay for these imports
    import base64
    import hashlib
    import json
    import os
    import time
    import zlib

    _sys.stderr = _sys.stdout  # the canonical solution's own chatter must not mix in
    outputs, error, spent = [], None, 0.0
    for i, blob in enumerate(inputs):
        args = loads(blob)
        started = time.perf_counter()
        try:
            out = fn(*args)
            spent += time.perf_counter() - started
            if oracle == "not_none":
                out = out is not None
            elif oracle == "set_eq":
                out = set_(out)
            outputs.append(enc(out, json.dumps))
        except BaseException_ as e:
            error = f"input {i}: {type_(e).__name__}: {e}"[:300]
            break
    payload = json.dumps({"outputs": outputs, "error": error}, sort_keys=True).encode()
    blob = base64.b64encode(zlib.compress(payload, 9)).decode()
    digest = hashlib.sha256(payload).hexdigest()[:16]
    count = max_(1, -(-len_(blob) // size))
    part = blob[chunk * size : (chunk + 1) * size]
    os.write(2, f"\n@@scoder {chunk} {count} {digest} {spent!r}@@{part}@@\n".encode())
    return True
