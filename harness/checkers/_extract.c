/* The checkers' column extractor, compiled: the per-op and per-record loops of
 * harness/checkers/table.py and columns.py, which are most of what `check_all` costs on a
 * long history (a million ops touched one by one in the interpreter). Each function does
 * what its Python twin does, in one pass, and the Python side keeps the twin for a machine
 * without a C compiler (harness/checkers/extract.py chooses); tests/checkers/test_extract.py
 * holds them equal, bent histories included.
 *
 * Every object comes from the history's own lists and dicts, which the caller holds for
 * the whole call: borrowed references stay valid. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

static PyObject *s_f, *s_value, *s_process, *s_type, *s_time, *s_index, *s_payload_id, *s_record_id,
    *s_consumer, *s_key;

enum { INVOKE = 0, OK = 1, FAIL = 2, INFO = 3 };

/* An exact int that fits in 64 bits, into *out; 0 (no error set) otherwise. */
static int small_int(PyObject *o, int64_t *out) {
    int overflow = 0;
    long long v;
    if (!PyLong_CheckExact(o))
        return 0;
    v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow || (v == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    *out = (int64_t)v;
    return 1;
}

/* A list or tuple of three exact ints that fit in 64 bits, into out[0..2]. */
static int three_ints(PyObject *rid, int64_t *out) {
    PyObject **items;
    if (PyList_CheckExact(rid)) {
        if (PyList_GET_SIZE(rid) != 3)
            return 0;
        items = ((PyListObject *)rid)->ob_item;
    } else if (PyTuple_CheckExact(rid)) {
        if (PyTuple_GET_SIZE(rid) != 3)
            return 0;
        items = ((PyTupleObject *)rid)->ob_item;
    } else {
        return 0;
    }
    return small_int(items[0], out) && small_int(items[1], out + 1) && small_int(items[2], out + 2);
}

/* The dense id of `pid` in `index` (`known` lists them), numbering it if new; -1 with an
 * error set if it cannot key a dict. */
static Py_ssize_t dense_id(PyObject *index, PyObject *known, PyObject *pid) {
    PyObject *found = PyDict_GetItemWithError(index, pid);
    PyObject *k;
    Py_ssize_t n;
    if (found != NULL)
        return PyLong_AsSsize_t(found);
    if (PyErr_Occurred())
        return -1;
    n = PyList_GET_SIZE(known);
    k = PyLong_FromSsize_t(n);
    if (k == NULL || PyDict_SetItem(index, pid, k) < 0 || PyList_Append(known, pid) < 0) {
        Py_XDECREF(k);
        return -1;
    }
    Py_DECREF(k);
    return n;
}

/* Take the payload ids numbered from `start` on out of `index` and `known` again. */
static int forget(PyObject *index, PyObject *known, Py_ssize_t start) {
    Py_ssize_t k;
    for (k = PyList_GET_SIZE(known) - 1; k >= start; k--)
        if (PyDict_DelItem(index, PyList_GET_ITEM(known, k)) < 0)
            return -1;
    return PyList_SetSlice(known, start, PyList_GET_SIZE(known), NULL);
}

static PyObject *new_column(Py_ssize_t n, size_t width) {
    return PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)(n * width));
}

/* A history's ops and a read's records are a million objects scattered in memory, so the
 * loops below wait on memory, not on their instructions: they ask for each op's or record's
 * object, then its value's table, then its fields' objects a few places before they need
 * them (prefetches), so that those waits overlap. */
#if defined(__GNUC__) || defined(__clang__)
#define PREFETCH(address) __builtin_prefetch(address)
#else
#define PREFETCH(address) ((void)(address))
#endif
#define AHEAD_RECORD 16 /* the record's dict object */
#define AHEAD_TABLE 8   /* its keys and values */
#define AHEAD_FIELDS 4  /* its fields, looked up; their objects */
#define RING 8          /* read_columns's ring (a power of two above READ_AHEAD_FIELDS) */

/* Where an op's class keeps its attributes (harness.history.Op is a dataclass with slots):
 * their offsets in the object, read directly instead of by getattr, or -1 where the class
 * is not the one measured or an attribute is no plain slot (getattr then). */
enum { A_VALUE, A_PROCESS, A_TYPE, A_TIME, A_INDEX, A_F, N_ATTRS };

typedef struct {
    PyTypeObject *type;
    Py_ssize_t offset[N_ATTRS];
} OpLayout;

static PyObject **attr_names[N_ATTRS] = {&s_value, &s_process, &s_type, &s_time, &s_index,
                                         &s_f};

static void measure_layout(PyTypeObject *type, OpLayout *layout) {
    int a;
    layout->type = type;
    for (a = 0; a < N_ATTRS; a++) {
        /* what getattr would find first: a data descriptor in the class (a slot's is
         * one), unless the class asks for attributes its own way */
        PyObject *descr = type->tp_getattro == PyObject_GenericGetAttr
                              ? _PyType_Lookup(type, *attr_names[a])
                              : NULL;
        layout->offset[a] = -1;
        if (descr != NULL && Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
            PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
            if (member->type == T_OBJECT_EX)
                layout->offset[a] = member->offset;
        }
    }
}

/* The op's attribute, borrowed from its slot, or NULL where it must be asked by getattr. */
static PyObject *slot_of(PyObject *op, const OpLayout *layout, int a) {
    if (Py_TYPE(op) != layout->type || layout->offset[a] < 0)
        return NULL;
    return *(PyObject **)((char *)op + layout->offset[a]);
}

/* The op's attribute, a new reference (getattr's error where it has none). */
static PyObject *attr_of(PyObject *op, const OpLayout *layout, int a) {
    PyObject *got = slot_of(op, layout, a);
    if (got != NULL)
        return Py_NewRef(got);
    return PyObject_GetAttr(op, *attr_names[a]);
}

/* The op at place j of `positions`, or NULL (no error set) if that is no place in `ops`
 * (the loop refuses it in its turn). */
static PyObject *op_at(PyObject *ops, PyObject *positions, Py_ssize_t j) {
    Py_ssize_t at = PyLong_AsSsize_t(PyList_GET_ITEM(positions, j));
    if (at < 0 || at >= PyList_GET_SIZE(ops)) {
        PyErr_Clear();
        return NULL;
    }
    return PyList_GET_ITEM(ops, at);
}

/* Ask for a dict's keys and values (a record, or an op's value). */
static void prefetch_table(PyObject *record) {
    if (PyDict_CheckExact(record)) {
        PyDictObject *d = (PyDictObject *)record;
        PREFETCH(d->ma_keys);
        PREFETCH((char *)d->ma_keys + 64);
        if (d->ma_values != NULL)
            PREFETCH(d->ma_values);
    }
}

/* Ask for what looking `key` up in the dict `index` will touch, one step of the probe at a
 * time: `stage` 0 asks for the key's slot in the hash table, 1 for the entry that slot
 * names, 2 for the entry's key and value objects. Each stage reads only what the previous
 * one asked for, so a loop that runs them a few records apart finds it at hand.
 *
 * This reads CPython's dict layout (3.11 and 3.12: pycore_dict.h's _dictkeysobject), so
 * it is only a hint: every address comes from the dict's current table, is checked against
 * its bounds, and is only prefetched, never used. Elsewhere it does nothing; the look-up
 * itself is always PyDict_GetItemWithError. `*hash` carries the key's hash from stage 0
 * (-1: no hint for this key). */
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030D0000
typedef struct {
    Py_ssize_t refcnt;
    uint8_t log2_size, log2_index_bytes, kind; /* kind 0: general entries, else unicode */
    uint32_t version;
    Py_ssize_t usable, nentries;
    char indices[];
} DictKeys;

typedef struct {
    Py_hash_t hash;
    PyObject *key, *value;
} GeneralEntry;

typedef struct {
    PyObject *key, *value;
} UnicodeEntry;

static void prefetch_probe(PyObject *index, PyObject *key, Py_hash_t *hash, int stage) {
    DictKeys *keys = (DictKeys *)((PyDictObject *)index)->ma_keys;
    size_t slot;
    int width;
    Py_ssize_t ix;
    PyObject **entry, *found_key, *found_value;
    if (stage == 0) {
        /* A string's hash is kept in it (computed here once if not yet); other keys get no
         * hint, as hashing them may run Python code. */
        *hash = PyUnicode_CheckExact(key) ? PyObject_Hash(key) : -1;
        if (*hash == -1) {
            PyErr_Clear();
            return;
        }
    }
    width = keys->log2_index_bytes - keys->log2_size; /* an index is 1 << width bytes */
    if (*hash == -1 || ((PyDictObject *)index)->ma_values != NULL || keys->log2_size >= 64 ||
        width < 0 || width > 3)
        return;
    slot = (size_t)*hash & (((size_t)1 << keys->log2_size) - 1);
    if (stage == 0) {
        PREFETCH(keys->indices + (slot << width));
        return;
    }
    switch (width) {
    case 0: ix = ((int8_t *)keys->indices)[slot]; break;
    case 1: ix = ((int16_t *)keys->indices)[slot]; break;
    case 2: ix = ((int32_t *)keys->indices)[slot]; break;
    case 3: ix = ((int64_t *)keys->indices)[slot]; break;
    default: return;
    }
    if (ix < 0 || ix >= keys->nentries)
        return;
    /* the entry's key and value: (hash, key, value) in a general table, (key, value) in
     * one of strings only */
    entry = (PyObject **)(keys->indices + ((size_t)1 << keys->log2_index_bytes) +
                          (keys->kind == 0 ? ix * sizeof(GeneralEntry) + sizeof(Py_hash_t)
                                           : ix * sizeof(UnicodeEntry)));
    if (stage == 1) {
        PREFETCH(entry);
        return;
    }
    found_key = entry[0];
    found_value = entry[1];
    /* an equal key that is another object is compared with this one */
    if (found_key != key && found_key != NULL)
        PREFETCH(found_key);
    if (found_value != NULL)
        PREFETCH(found_value);
}
#else
static void prefetch_probe(PyObject *index, PyObject *key, Py_hash_t *hash, int stage) {
    (void)index;
    (void)key;
    (void)hash;
    (void)stage;
}
#endif

/* Ask for an append op's objects a few ops ahead: the op, then its value, time and index,
 * then its value's table. */
static void prefetch_append(PyObject *ops, PyObject *positions, Py_ssize_t i, Py_ssize_t n,
                            const OpLayout *layout) {
    PyObject *op, *attr;
    int a;
    if (i + AHEAD_RECORD < n && (op = op_at(ops, positions, i + AHEAD_RECORD)) != NULL)
        PREFETCH(op);
    if (i + AHEAD_TABLE < n && (op = op_at(ops, positions, i + AHEAD_TABLE)) != NULL) {
        /* (its process and type are a few shared objects, already at hand) */
        static const int wanted[] = {A_VALUE, A_TIME, A_INDEX};
        for (a = 0; a < 3; a++)
            if ((attr = slot_of(op, layout, wanted[a])) != NULL)
                PREFETCH(attr);
    }
    if (i + AHEAD_FIELDS < n && (op = op_at(ops, positions, i + AHEAD_FIELDS)) != NULL &&
        (attr = slot_of(op, layout, A_VALUE)) != NULL)
        prefetch_table(attr);
}

/* `dict[name]` (None where it has none) appended to the list `column`: that value, borrowed,
 * or NULL with an error set. */
static PyObject *append_get(PyObject *column, PyObject *dict, PyObject *name) {
    PyObject *got = PyDict_GetItemWithError(dict, name);
    if (got == NULL) {
        if (PyErr_Occurred())
            return NULL;
        got = Py_None;
    }
    return PyList_Append(column, got) < 0 ? NULL : got;
}

/* append_columns(ops, positions, index, known, type_codes) -> (types, pids, processes,
 * process_names, times, indexes, rids, flat, invoke_keys): table.Appends's loop. Columns are
 * bytearrays (int8 types, int64 the rest); `flat` holds the acknowledged record ids' parts
 * while each is three ints that fit in 64 bits, else None; `invoke_keys` lists the
 * invocations' value.get("key"), in order. Raises TypeError or KeyError where the Python loop
 * does (the table is then None), and TypeError for a time or index that is no int of 64
 * bits. */
static PyObject *append_columns(PyObject *self, PyObject *args) {
    PyObject *ops, *positions, *index, *known, *codes;
    PyObject *types = NULL, *pids = NULL, *procs = NULL, *times = NULL, *indexes = NULL;
    PyObject *rids = NULL, *flat = NULL, *processes = NULL, *names = NULL, *result = NULL;
    PyObject *keys = NULL;
    PyObject **held_pid = NULL;
    Py_ssize_t *held_k = NULL, held_cap = 0;
    Py_ssize_t n, i, n_ok = 0;
    int flat_ok = 1;
    OpLayout layout = {NULL, {0}}; /* (no type: every op asked by getattr) */
    (void)self;
    if (!PyArg_ParseTuple(args, "O!O!O!O!O!", &PyList_Type, &ops, &PyList_Type, &positions,
                          &PyDict_Type, &index, &PyList_Type, &known, &PyDict_Type, &codes))
        return NULL;
    n = PyList_GET_SIZE(positions);
    types = new_column(n, 1);
    pids = new_column(n, 8);
    procs = new_column(n, 8);
    times = new_column(n, 8);
    indexes = new_column(n, 8);
    rids = PyList_New(0);
    keys = PyList_New(0);
    flat = new_column(3 * n, 8);
    processes = PyDict_New();
    if (!types || !pids || !procs || !times || !indexes || !rids || !keys || !flat || !processes)
        goto done;
    if (n > 0 && op_at(ops, positions, 0) != NULL)
        measure_layout(Py_TYPE(op_at(ops, positions, 0)), &layout);
    {
        int8_t *t_col = (int8_t *)PyByteArray_AS_STRING(types);
        int64_t *p_col = (int64_t *)PyByteArray_AS_STRING(pids);
        int64_t *q_col = (int64_t *)PyByteArray_AS_STRING(procs);
        int64_t *time_col = (int64_t *)PyByteArray_AS_STRING(times);
        int64_t *i_col = (int64_t *)PyByteArray_AS_STRING(indexes);
        int64_t *flat_col = (int64_t *)PyByteArray_AS_STRING(flat);
        for (i = 0; i < n; i++) {
            Py_ssize_t at = PyLong_AsSsize_t(PyList_GET_ITEM(positions, i));
            PyObject *op, *v, *pid, *p, *q, *type, *code, *attr;
            Py_ssize_t qi, k;
            int t;
            if (at == -1 && PyErr_Occurred())
                goto done;
            if (at < 0 || at >= PyList_GET_SIZE(ops)) {
                PyErr_SetString(PyExc_IndexError, "append position out of range");
                goto done;
            }
            prefetch_append(ops, positions, i, n, &layout);
            op = PyList_GET_ITEM(ops, at);
            v = attr_of(op, &layout, A_VALUE);
            if (v == NULL)
                goto done;
            Py_DECREF(v); /* (the op holds it) */
            if (!PyDict_CheckExact(v)) {
                PyErr_SetString(PyExc_TypeError, "an append's value is no dict");
                goto done;
            }
            pid = PyDict_GetItemWithError(v, s_payload_id);
            if (pid == NULL) {
                if (!PyErr_Occurred())
                    PyErr_SetObject(PyExc_KeyError, s_payload_id);
                goto done;
            }
            p = attr_of(op, &layout, A_PROCESS);
            if (p == NULL)
                goto done;
            q = PyDict_GetItemWithError(processes, p);
            if (q == NULL) {
                PyObject *number;
                if (PyErr_Occurred()) {
                    Py_DECREF(p);
                    goto done;
                }
                qi = PyDict_GET_SIZE(processes);
                number = PyLong_FromSsize_t(qi);
                if (number == NULL || PyDict_SetItem(processes, p, number) < 0) {
                    Py_XDECREF(number);
                    Py_DECREF(p);
                    goto done;
                }
                Py_DECREF(number);
                if (qi >= held_cap) {
                    Py_ssize_t cap = held_cap ? 2 * held_cap : 64;
                    PyObject **hp = PyMem_Realloc(held_pid, cap * sizeof(PyObject *));
                    Py_ssize_t *hk;
                    if (hp == NULL) {
                        Py_DECREF(p);
                        PyErr_NoMemory();
                        goto done;
                    }
                    held_pid = hp;
                    hk = PyMem_Realloc(held_k, cap * sizeof(Py_ssize_t));
                    if (hk == NULL) {
                        Py_DECREF(p);
                        PyErr_NoMemory();
                        goto done;
                    }
                    held_k = hk;
                    held_cap = cap;
                }
                held_pid[qi] = NULL;
            } else {
                qi = PyLong_AsSsize_t(q);
            }
            Py_DECREF(p);
            type = attr_of(op, &layout, A_TYPE);
            if (type == NULL)
                goto done;
            code = PyDict_GetItemWithError(codes, type);
            Py_DECREF(type);
            if (code == NULL && PyErr_Occurred())
                goto done;
            t = code == NULL ? INFO : (int)PyLong_AsLong(code);
            /* A completion's payload id is nearly always its process's last invocation's:
             * one comparison of two strings, not a probe of a table of a million. */
            if (t != INVOKE && held_pid[qi] != NULL && PyUnicode_CheckExact(pid) &&
                PyUnicode_CheckExact(held_pid[qi]) &&
                (pid == held_pid[qi] || PyUnicode_Compare(pid, held_pid[qi]) == 0)) {
                k = held_k[qi];
            } else {
                k = dense_id(index, known, pid);
                if (k < 0)
                    goto done;
            }
            if (t == INVOKE) {
                if (append_get(keys, v, s_key) == NULL)
                    goto done;
                held_pid[qi] = pid;
                held_k[qi] = k;
            } else if (t == OK) {
                PyObject *rid = append_get(rids, v, s_record_id);
                if (rid == NULL)
                    goto done;
                if (flat_ok && !three_ints(rid, flat_col + 3 * n_ok))
                    flat_ok = 0;
                n_ok++;
            }
            t_col[i] = (int8_t)t;
            p_col[i] = k;
            q_col[i] = qi;
            attr = attr_of(op, &layout, A_TIME);
            if (attr == NULL)
                goto done;
            if (!small_int(attr, time_col + i)) {
                Py_DECREF(attr);
                PyErr_SetString(PyExc_TypeError, "op times and indexes must be ints");
                goto done;
            }
            Py_DECREF(attr);
            attr = attr_of(op, &layout, A_INDEX);
            if (attr == NULL)
                goto done;
            if (!small_int(attr, i_col + i)) {
                Py_DECREF(attr);
                PyErr_SetString(PyExc_TypeError, "op times and indexes must be ints");
                goto done;
            }
            Py_DECREF(attr);
        }
    }
    if (flat_ok) {
        if (PyByteArray_Resize(flat, 3 * n_ok * 8) < 0)
            goto done;
    } else {
        Py_SETREF(flat, Py_NewRef(Py_None));
    }
    names = PyDict_Keys(processes);
    if (names == NULL)
        goto done;
    result = PyTuple_Pack(9, types, pids, procs, names, times, indexes, rids, flat, keys);
done:
    PyMem_Free(held_pid);
    PyMem_Free(held_k);
    Py_XDECREF(types);
    Py_XDECREF(pids);
    Py_XDECREF(procs);
    Py_XDECREF(times);
    Py_XDECREF(indexes);
    Py_XDECREF(rids);
    Py_XDECREF(keys);
    Py_XDECREF(flat);
    Py_XDECREF(processes);
    Py_XDECREF(names);
    return result;
}

typedef struct {
    PyObject *pid, *rid, *consumer; /* borrowed: the record holds them */
    Py_hash_t hash;                 /* the pid's, for prefetch_probe */
} Fields;

/* read_columns looks each payload id up in the registry's dict, a miss of its own per step
 * of the probe: its fields come further ahead than an append's, to leave room for them. */
#define READ_AHEAD_FIELDS 6
#define READ_AHEAD_SLOT 4
#define READ_AHEAD_ENTRY 2
#define READ_AHEAD_OBJECTS 1

/* The fields of a record into *f (None where missing); -1 with an error set if it is no
 * dict (TypeError) or a look-up fails. */
static int take_fields(PyObject *record, Fields *f, int want_consumer) {
    if (!PyDict_CheckExact(record)) {
        PyErr_SetString(PyExc_TypeError, "a record is no dict");
        return -1;
    }
    f->pid = PyDict_GetItemWithError(record, s_payload_id);
    if (f->pid == NULL) {
        if (PyErr_Occurred())
            return -1;
        f->pid = Py_None;
    }
    f->rid = PyDict_GetItemWithError(record, s_record_id);
    if (f->rid == NULL) {
        if (PyErr_Occurred())
            return -1;
        f->rid = Py_None;
    }
    f->consumer = Py_None;
    if (want_consumer) {
        f->consumer = PyDict_GetItemWithError(record, s_consumer);
        if (f->consumer == NULL) {
            if (PyErr_Occurred())
                return -1;
            f->consumer = Py_None;
        }
    }
    PREFETCH(f->pid);
    PREFETCH(f->rid);
    return 0;
}

/* read_columns(records, index, known) -> (pids, rids, consumers, id_column): a read's records
 * (a list of dicts) as the columns of columns.Columns, in one pass: `record.get("payload_id")`,
 * `record.get("record_id")`, `record.get("consumer")` when the first record names a consumer
 * (else None: a read's records name none, and the column is seldom wanted), and the payload
 * ids' dense ids in `index` (new ones numbered as first met) as an int64 bytearray, or None
 * if one cannot key a dict. Raises TypeError if a record is no dict (columns_of then says
 * there are no columns), numbering nothing. */
static PyObject *read_columns(PyObject *self, PyObject *args) {
    PyObject *records, *index, *known;
    PyObject *pids = NULL, *rids = NULL, *consumers = NULL, *ids = NULL, *result = NULL;
    Py_ssize_t n, i, known_before;
    int64_t *id_col = NULL;
    Fields ring[RING];
    (void)self;
    if (!PyArg_ParseTuple(args, "O!O!O!", &PyList_Type, &records, &PyDict_Type, &index,
                          &PyList_Type, &known))
        return NULL;
    n = PyList_GET_SIZE(records);
    known_before = PyList_GET_SIZE(known);
    pids = PyList_New(n);
    rids = PyList_New(n);
    ids = new_column(n, 8);
    if (!pids || !rids || !ids)
        goto done;
    if (n > 0 && PyDict_CheckExact(PyList_GET_ITEM(records, 0))) {
        int has = PyDict_Contains(PyList_GET_ITEM(records, 0), s_consumer);
        if (has < 0)
            goto done;
        if (has && (consumers = PyList_New(n)) == NULL)
            goto done;
    }
    id_col = (int64_t *)PyByteArray_AS_STRING(ids);
    for (i = 0; i < n && i < READ_AHEAD_FIELDS; i++) {
        if (take_fields(PyList_GET_ITEM(records, i), &ring[i], consumers != NULL) < 0)
            goto refused;
        ring[i].hash = -1; /* the first few records get no probe hints */
    }
    for (i = 0; i < n; i++) {
        Fields *f = &ring[i & (RING - 1)];
        if (i + AHEAD_RECORD < n)
            PREFETCH(PyList_GET_ITEM(records, i + AHEAD_RECORD));
        if (i + AHEAD_TABLE < n)
            prefetch_table(PyList_GET_ITEM(records, i + AHEAD_TABLE));
        if (i + READ_AHEAD_FIELDS < n &&
            take_fields(PyList_GET_ITEM(records, i + READ_AHEAD_FIELDS),
                        &ring[(i + READ_AHEAD_FIELDS) & (RING - 1)], consumers != NULL) < 0)
            goto refused;
        if (id_col != NULL) {
            Fields *ahead;
            if (i + READ_AHEAD_SLOT < n) {
                ahead = &ring[(i + READ_AHEAD_SLOT) & (RING - 1)];
                prefetch_probe(index, ahead->pid, &ahead->hash, 0);
            }
            if (i + READ_AHEAD_ENTRY < n) {
                ahead = &ring[(i + READ_AHEAD_ENTRY) & (RING - 1)];
                prefetch_probe(index, ahead->pid, &ahead->hash, 1);
            }
            if (i + READ_AHEAD_OBJECTS < n) {
                ahead = &ring[(i + READ_AHEAD_OBJECTS) & (RING - 1)];
                prefetch_probe(index, ahead->pid, &ahead->hash, 2);
            }
        }
        PyList_SET_ITEM(pids, i, Py_NewRef(f->pid));
        PyList_SET_ITEM(rids, i, Py_NewRef(f->rid));
        if (consumers != NULL)
            PyList_SET_ITEM(consumers, i, Py_NewRef(f->consumer));
        if (id_col != NULL) {
            Py_ssize_t k = dense_id(index, known, f->pid);
            if (k < 0) {
                if (!PyErr_ExceptionMatches(PyExc_TypeError))
                    goto done;
                /* An unhashable payload id: no dense ids for this read, and none of its
                 * new payload ids numbered (as PayloadIds.of leaves the registry). */
                PyErr_Clear();
                if (forget(index, known, known_before) < 0)
                    goto done;
                id_col = NULL;
                Py_SETREF(ids, Py_NewRef(Py_None));
            } else {
                id_col[i] = k;
            }
        }
    }
    result = PyTuple_Pack(4, pids, rids, consumers ? consumers : Py_None, ids);
    goto done;
refused:
    /* a record that is no dict: nothing numbered stays (the caller goes record by record) */
    if (PyErr_ExceptionMatches(PyExc_TypeError)) {
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        if (forget(index, known, known_before) < 0) {
            Py_XDECREF(type);
            Py_XDECREF(value);
            Py_XDECREF(traceback);
            goto done;
        }
        PyErr_Restore(type, value, traceback);
    }
done:
    Py_XDECREF(pids);
    Py_XDECREF(rids);
    Py_XDECREF(consumers);
    Py_XDECREF(ids);
    return result;
}

/* Ask for the record ids ahead of place j in a read's list, a step per distance (those of
 * the record loops): the list object, then its items, then the ints. */
static void prefetch_rid(PyObject *read, Py_ssize_t j, Py_ssize_t m) {
    PyObject *rid;
    if (j + AHEAD_RECORD < m)
        PREFETCH(PyList_GET_ITEM(read, j + AHEAD_RECORD));
    if (j + AHEAD_TABLE < m && PyList_CheckExact(rid = PyList_GET_ITEM(read, j + AHEAD_TABLE)))
        PREFETCH(((PyListObject *)rid)->ob_item);
    if (j + AHEAD_FIELDS < m && PyList_CheckExact(rid = PyList_GET_ITEM(read, j + AHEAD_FIELDS))
        && PyList_GET_SIZE(rid) == 3) {
        PREFETCH(PyList_GET_ITEM(rid, 0));
        PREFETCH(PyList_GET_ITEM(rid, 1));
        PREFETCH(PyList_GET_ITEM(rid, 2));
    }
}

/* read_rows(raws, ids, ack_of, ok_rids, ok_rows) -> (rows, other): table._read_rows's core.
 * `raws` is a list of lists of record ids (each read's), `ids` their dense payload ids
 * (int64, concatenated), `ack_of` each dense id's acknowledged append (-1: none), `ok_rids`
 * those appends' record ids and `ok_rows` their (shard, batch, index) rows (int64). A record
 * id that is its payload id's acknowledged one itself (the same object, as in a history
 * still in memory) takes that row; one that is a list of three ints that fit in 64 bits is
 * converted (as in a history read back from a file, where it is only equal); any other that
 * equals the acknowledged one takes that row (as [1, True, 0] equals [1, 1, 0]); `other`
 * lists the places of the rest, for the caller to convert (or refuse) as list_rows does. */
static PyObject *read_rows(PyObject *self, PyObject *args) {
    PyObject *raws, *ok_rids;
    Py_buffer ids, ack_of, ok_rows;
    PyObject *rows = NULL, *other = NULL, *result = NULL;
    Py_ssize_t n = 0, r, at = 0, n_ok, n_ids;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!y*y*O!y*", &PyList_Type, &raws, &ids, &ack_of, &PyList_Type,
                          &ok_rids, &ok_rows))
        return NULL;
    n_ok = PyList_GET_SIZE(ok_rids);
    n_ids = ids.len / 8;
    for (r = 0; r < PyList_GET_SIZE(raws); r++) {
        PyObject *read = PyList_GET_ITEM(raws, r);
        if (!PyList_CheckExact(read)) {
            PyErr_SetString(PyExc_TypeError, "a read's record ids are no list");
            goto done;
        }
        n += PyList_GET_SIZE(read);
    }
    if (n != n_ids || ok_rows.len != n_ok * 24) {
        PyErr_SetString(PyExc_ValueError, "record ids, payload ids and rows do not line up");
        goto done;
    }
    rows = new_column(3 * n, 8);
    other = PyList_New(0);
    if (!rows || !other)
        goto done;
    {
        const int64_t *id_col = (const int64_t *)ids.buf;
        const int64_t *acks = (const int64_t *)ack_of.buf;
        const int64_t *ok_col = (const int64_t *)ok_rows.buf;
        int64_t *row = (int64_t *)PyByteArray_AS_STRING(rows);
        Py_ssize_t n_acks = ack_of.len / 8;
        for (r = 0; r < PyList_GET_SIZE(raws); r++) {
            PyObject *read = PyList_GET_ITEM(raws, r);
            Py_ssize_t j;
            Py_ssize_t m = PyList_GET_SIZE(read);
            int shared = 0;
            for (j = 0; j < m; j++, at++) {
                PyObject *raw = PyList_GET_ITEM(read, j), *expected = NULL, *place;
                int64_t id = id_col[at], a = (id >= 0 && id < n_acks) ? acks[id] : -1;
                /* (the records ahead are asked for only while this read's ids are not the
                 * acknowledged ones themselves, which need nothing of theirs) */
                if (!shared)
                    prefetch_rid(read, j, m);
                if (a >= 0 && a < n_ok) {
                    /* the acknowledged record id itself (the history shares it): its row */
                    expected = PyList_GET_ITEM(ok_rids, a);
                    shared = raw == expected;
                    if (shared) {
                        memcpy(row + 3 * at, ok_col + 3 * a, 24);
                        continue;
                    }
                }
                /* A list of three ints is its own row (equal to its acknowledged one's
                 * exactly when its ints are): converted without comparing the two. */
                if (PyList_CheckExact(raw) && three_ints(raw, row + 3 * at))
                    continue;
                if (expected != NULL && PyList_CheckExact(raw)) {
                    int same = PyObject_RichCompareBool(raw, expected, Py_EQ);
                    if (same < 0)
                        goto done;
                    if (same) {
                        memcpy(row + 3 * at, ok_col + 3 * a, 24);
                        continue;
                    }
                }
                place = PyLong_FromSsize_t(at);
                if (place == NULL || PyList_Append(other, place) < 0) {
                    Py_XDECREF(place);
                    goto done;
                }
                Py_DECREF(place);
            }
        }
    }
    result = PyTuple_Pack(2, rows, other);
done:
    PyBuffer_Release(&ids);
    PyBuffer_Release(&ack_of);
    PyBuffer_Release(&ok_rows);
    Py_XDECREF(rows);
    Py_XDECREF(other);
    return result;
}

/* group_by_f(ops) -> {f: positions}: HistoryTable's one pass over the ops, each op's place
 * in `ops` listed under its f in history order. Raises what the Python loop raises where an
 * op has no f (AttributeError) or an f cannot key a dict (TypeError). */
static PyObject *group_by_f(PyObject *self, PyObject *args) {
    PyObject *ops, *by_f, *last_f = NULL, *last_at = NULL;
    OpLayout layout = {NULL, {0}}; /* (no type: every op asked by getattr) */
    Py_ssize_t n, i;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!", &PyList_Type, &ops))
        return NULL;
    n = PyList_GET_SIZE(ops);
    by_f = PyDict_New();
    if (by_f == NULL)
        return NULL;
    if (n > 0)
        measure_layout(Py_TYPE(PyList_GET_ITEM(ops, 0)), &layout);
    for (i = 0; i < n; i++) {
        PyObject *f, *at, *place;
        if (i + AHEAD_RECORD < n)
            PREFETCH(PyList_GET_ITEM(ops, i + AHEAD_RECORD));
        f = attr_of(PyList_GET_ITEM(ops, i), &layout, A_F);
        if (f == NULL)
            goto fail;
        if (f == last_f) { /* (the same object as the op before's: the same key) */
            at = last_at;
        } else {
            at = PyDict_GetItemWithError(by_f, f);
            if (at == NULL) {
                if (PyErr_Occurred() || (at = PyList_New(0)) == NULL) {
                    Py_DECREF(f);
                    goto fail;
                }
                if (PyDict_SetItem(by_f, f, at) < 0) {
                    Py_DECREF(at);
                    Py_DECREF(f);
                    goto fail;
                }
                Py_DECREF(at); /* (the dict holds it) */
            }
        }
        place = PyLong_FromSsize_t(i);
        if (place == NULL || PyList_Append(at, place) < 0) {
            Py_XDECREF(place);
            Py_DECREF(f);
            goto fail;
        }
        Py_DECREF(place);
        Py_XSETREF(last_f, f); /* (held, so that no other object takes its address) */
        last_at = at;          /* (the dict holds it) */
    }
    Py_XDECREF(last_f);
    return by_f;
fail:
    Py_XDECREF(last_f);
    Py_DECREF(by_f);
    return NULL;
}

/* int_rows(raws) -> rows or None: list_rows's rows, where every record id of the list `raws`
 * is a list of three exact ints that fit in 64 bits (an int64 bytearray, three per id);
 * None otherwise, and list_rows then decides in Python what the others are. */
static PyObject *int_rows(PyObject *self, PyObject *args) {
    PyObject *raws, *rows;
    Py_ssize_t n, i;
    int64_t *row;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!", &PyList_Type, &raws))
        return NULL;
    n = PyList_GET_SIZE(raws);
    rows = new_column(3 * n, 8);
    if (rows == NULL)
        return NULL;
    row = (int64_t *)PyByteArray_AS_STRING(rows);
    for (i = 0; i < n; i++) {
        PyObject *raw = PyList_GET_ITEM(raws, i);
        if (i + AHEAD_RECORD < n)
            PREFETCH(PyList_GET_ITEM(raws, i + AHEAD_RECORD));
        if (i + AHEAD_TABLE < n) {
            PyObject *ahead = PyList_GET_ITEM(raws, i + AHEAD_TABLE);
            if (PyList_CheckExact(ahead))
                PREFETCH(((PyListObject *)ahead)->ob_item);
        }
        if (i + AHEAD_FIELDS < n) {
            PyObject *ahead = PyList_GET_ITEM(raws, i + AHEAD_FIELDS);
            if (PyList_CheckExact(ahead) && PyList_GET_SIZE(ahead) == 3) {
                PREFETCH(PyList_GET_ITEM(ahead, 0));
                PREFETCH(PyList_GET_ITEM(ahead, 1));
                PREFETCH(PyList_GET_ITEM(ahead, 2));
            }
        }
        if (!PyList_CheckExact(raw) || !three_ints(raw, row + 3 * i)) {
            Py_DECREF(rows);
            Py_RETURN_NONE;
        }
    }
    return rows;
}

static PyMethodDef methods[] = {
    {"append_columns", append_columns, METH_VARARGS, "table.Appends's columns in one pass."},
    {"read_columns", read_columns, METH_VARARGS, "A read's payload ids, record ids, consumers, dense ids."},
    {"read_rows", read_rows, METH_VARARGS, "table._read_rows's rows in one pass."},
    {"group_by_f", group_by_f, METH_VARARGS, "HistoryTable's positions of each f."},
    {"int_rows", int_rows, METH_VARARGS, "list_rows's rows where every id is three ints."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_extract", "The checkers' column extractor, compiled.", -1, methods,
};

PyMODINIT_FUNC PyInit__extract(void) {
    if (!(s_f = PyUnicode_InternFromString("f")) ||
        !(s_value = PyUnicode_InternFromString("value")) ||
        !(s_process = PyUnicode_InternFromString("process")) ||
        !(s_type = PyUnicode_InternFromString("type")) ||
        !(s_time = PyUnicode_InternFromString("time")) ||
        !(s_index = PyUnicode_InternFromString("index")) ||
        !(s_payload_id = PyUnicode_InternFromString("payload_id")) ||
        !(s_record_id = PyUnicode_InternFromString("record_id")) ||
        !(s_consumer = PyUnicode_InternFromString("consumer")) ||
        !(s_key = PyUnicode_InternFromString("key")))
        return NULL;
    return PyModule_Create(&module);
}
