/*
 * scalekit._speedups: optional compiled hot paths. Every function here has a pure-Python
 * twin that defines its result (scalekit.sharding.keys / strategies); the tests compare the
 * two bit for bit, and the package runs unchanged without this module (set
 * SCALEKIT_NO_EXTENSIONS=1 to force the Python paths).
 *
 * JumpPlacement(names, fallback) is the jump-hash placement of JumpHash: key -> shard name,
 * with the stable key hash (splitmix64 for ints, BLAKE2b-64 for text/bytes/UUIDs, hash tags
 * applied) and Lamping and Veach's jump loop in C. Any key it does not handle itself (tuples,
 * big or negative ints, subclasses, oversized or unencodable text) goes to `fallback`, the
 * Python key_hash, which also raises the InvalidShardKeyError for keys without a stable hash.
 * RendezvousPlacement(names, seeds, weights, fallback) does the same for Rendezvous, whose
 * O(N) scoring loop is where its time goes. pg_hash_bytes_extended and pg_hash_int8_extended
 * are PostgreSQL's partitioning hashes (scalekit.sharding.postgres_hash). maglev_table builds
 * Maglev's lookup table and TablePlacement looks keys up in it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* The same bound as scalekit.sharding.keys.MAX_KEY_BYTES. */
#define MAX_KEY_BYTES 65536

/* ---- BLAKE2b with an 8-byte digest, unkeyed (RFC 7693) ------------------------------- */

static const uint64_t blake2b_iv[8] = {
    0x6A09E667F3BCC908ULL, 0xBB67AE8584CAA73BULL, 0x3C6EF372FE94F82BULL,
    0xA54FF53A5F1D36F1ULL, 0x510E527FADE682D1ULL, 0x9B05688C2B3E6C1FULL,
    0x1F83D9ABFB41BD6BULL, 0x5BE0CD19137E2179ULL,
};

static const uint8_t blake2b_sigma[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
};

static inline uint64_t rotr64(uint64_t x, unsigned n) { return (x >> n) | (x << (64 - n)); }

static inline uint64_t load64_le(const uint8_t *p) {
    return (uint64_t)p[0] | ((uint64_t)p[1] << 8) | ((uint64_t)p[2] << 16) |
           ((uint64_t)p[3] << 24) | ((uint64_t)p[4] << 32) | ((uint64_t)p[5] << 40) |
           ((uint64_t)p[6] << 48) | ((uint64_t)p[7] << 56);
}

#define B2B_G(a, b, c, d, x, y)       \
    do {                              \
        v[a] = v[a] + v[b] + (x);     \
        v[d] = rotr64(v[d] ^ v[a], 32); \
        v[c] = v[c] + v[d];           \
        v[b] = rotr64(v[b] ^ v[c], 24); \
        v[a] = v[a] + v[b] + (y);     \
        v[d] = rotr64(v[d] ^ v[a], 16); \
        v[c] = v[c] + v[d];           \
        v[b] = rotr64(v[b] ^ v[c], 63); \
    } while (0)

/* Compress one 128-byte block into h; `t` is the byte count so far, `last` flags the end. */
static void blake2b_compress(uint64_t h[8], const uint8_t block[128], uint64_t t, int last) {
    uint64_t v[16], m[16];
    for (int i = 0; i < 8; i++) {
        v[i] = h[i];
        v[i + 8] = blake2b_iv[i];
    }
    v[12] ^= t; /* the high word of the counter stays 0: keys are at most 64 KiB */
    if (last) v[14] = ~v[14];
    for (int i = 0; i < 16; i++) m[i] = load64_le(block + 8 * i);
    for (int r = 0; r < 12; r++) {
        const uint8_t *s = blake2b_sigma[r];
        B2B_G(0, 4, 8, 12, m[s[0]], m[s[1]]);
        B2B_G(1, 5, 9, 13, m[s[2]], m[s[3]]);
        B2B_G(2, 6, 10, 14, m[s[4]], m[s[5]]);
        B2B_G(3, 7, 11, 15, m[s[6]], m[s[7]]);
        B2B_G(0, 5, 10, 15, m[s[8]], m[s[9]]);
        B2B_G(1, 6, 11, 12, m[s[10]], m[s[11]]);
        B2B_G(2, 7, 8, 13, m[s[12]], m[s[13]]);
        B2B_G(3, 4, 9, 14, m[s[14]], m[s[15]]);
    }
    for (int i = 0; i < 8; i++) h[i] ^= v[i] ^ v[i + 8];
}

/* int.from_bytes(blake2b(data, digest_size=8).digest(), "little"). */
static uint64_t blake2b_64(const uint8_t *data, size_t len) {
    uint64_t h[8];
    uint8_t block[128];
    memcpy(h, blake2b_iv, sizeof h);
    h[0] ^= 0x01010000ULL ^ 8; /* depth 1, fanout 1, no key, 8-byte digest */
    uint64_t done = 0;
    while (len > 128) {
        done += 128;
        blake2b_compress(h, data, done, 0);
        data += 128;
        len -= 128;
    }
    memset(block, 0, sizeof block);
    if (len) memcpy(block, data, len);
    blake2b_compress(h, block, done + len, 1);
    return h[0]; /* the digest is h[0]'s little-endian bytes, read back little-endian */
}

/* ---- the key hash and the jump loop ------------------------------------------------- */

static inline uint64_t mix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

/* jump_hash(key, buckets) for 1 <= buckets < 2**31, as the Python reference computes it:
 * the quotient and the product are IEEE doubles (no x87, no contraction: none applies). */
static inline Py_ssize_t jump(uint64_t key, Py_ssize_t buckets) {
    int64_t b = -1, j = 0;
    while (j < buckets) {
        b = j;
        key = key * 2862933555777941757ULL + 1;
        j = (int64_t)((double)(b + 1) * (2147483648.0 / (double)((key >> 33) + 1)));
    }
    return (Py_ssize_t)b;
}

/* Redis-Cluster hash tag over UTF-8 or raw bytes: the first non-empty {tag}, else all. */
static inline void hash_tag(const char **data, Py_ssize_t *len) {
    const char *start = memchr(*data, '{', (size_t)*len);
    if (start == NULL) return;
    const char *after = start + 1;
    const char *end = memchr(after, '}', (size_t)(*data + *len - after));
    if (end != NULL && end > after) {
        *data = after;
        *len = end - after;
    }
}

/* ---- placements: JumpPlacement and RendezvousPlacement share one layout --------------- */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *names;     /* tuple of str */
    PyObject *fallback;  /* key -> int, the Python key_hash */
    PyObject *uuid_type; /* uuid.UUID, hashed here from its 128-bit int */
    Py_ssize_t n;
    uint64_t *seeds;     /* rendezvous: one seed per shard (NULL for jump) */
    double *weights;     /* weighted rendezvous: one weight per shard (else NULL) */
    uint32_t *table;     /* table placements (Maglev): shard index per slot (else NULL) */
    Py_ssize_t table_size;
} JumpPlacement;

static PyObject *int_attr; /* interned "int" */

/* key_hash(key) into *out; 0 on success, -1 with an exception set. */
static int placement_hash(JumpPlacement *self, PyObject *key, uint64_t *out) {
    PyTypeObject *kind = Py_TYPE(key);
    if (kind == &PyUnicode_Type) {
#if PY_VERSION_HEX < 0x030C0000
        if (PyUnicode_READY(key) < 0) return -1; /* a legacy string from an old C API */
#endif
        if (PyUnicode_IS_ASCII(key)) { /* its characters are its UTF-8 bytes: no copy */
            const char *data = (const char *)PyUnicode_DATA(key);
            Py_ssize_t len = PyUnicode_GET_LENGTH(key);
            hash_tag(&data, &len);
            if (len <= MAX_KEY_BYTES) {
                *out = blake2b_64((const uint8_t *)data, (size_t)len);
                return 0;
            }
        } else {
            /* A temporary encoding, as str.encode() makes: PyUnicode_AsUTF8AndSize would
             * cache the UTF-8 copy on the caller's string for as long as it lives. */
            PyObject *encoded = PyUnicode_AsUTF8String(key);
            if (encoded != NULL) {
                const char *data = PyBytes_AS_STRING(encoded);
                Py_ssize_t len = PyBytes_GET_SIZE(encoded);
                hash_tag(&data, &len);
                int fits = len <= MAX_KEY_BYTES;
                if (fits) *out = blake2b_64((const uint8_t *)data, (size_t)len);
                Py_DECREF(encoded);
                if (fits) return 0;
            } else {
                PyErr_Clear(); /* a lone surrogate: the fallback raises the scalekit error */
            }
        }
    } else if (kind == &PyLong_Type) {
        unsigned long long value = PyLong_AsUnsignedLongLong(key);
        if (!(value == (unsigned long long)-1 && PyErr_Occurred())) {
            *out = mix64((uint64_t)value);
            return 0;
        }
        PyErr_Clear(); /* negative or at least 2**64: hashed by its bytes in Python */
    } else if (kind == &PyBytes_Type) {
        const char *data = PyBytes_AS_STRING(key);
        Py_ssize_t len = PyBytes_GET_SIZE(key);
        hash_tag(&data, &len);
        if (len <= MAX_KEY_BYTES) {
            *out = blake2b_64((const uint8_t *)data, (size_t)len);
            return 0;
        }
    } else if ((PyObject *)kind == self->uuid_type) {
        /* blake2b(key.int.to_bytes(16, "big")) */
        PyObject *value = PyObject_GetAttr(key, int_attr);
        if (value == NULL) return -1;
        if (PyLong_CheckExact(value)) {
            uint8_t bytes[16];
            uint64_t low = (uint64_t)PyLong_AsUnsignedLongLongMask(value);
            PyObject *shift = PyLong_FromLong(64);
            PyObject *high_obj = shift ? PyNumber_Rshift(value, shift) : NULL;
            Py_XDECREF(shift);
            Py_DECREF(value);
            if (high_obj == NULL) return -1;
            unsigned long long high = PyLong_AsUnsignedLongLong(high_obj);
            Py_DECREF(high_obj);
            if (high == (unsigned long long)-1 && PyErr_Occurred()) {
                PyErr_Clear(); /* not a valid UUID int: let the fallback decide */
            } else {
                for (int i = 0; i < 8; i++) {
                    bytes[7 - i] = (uint8_t)(high >> (8 * i));
                    bytes[15 - i] = (uint8_t)(low >> (8 * i));
                }
                *out = blake2b_64(bytes, 16);
                return 0;
            }
        } else {
            Py_DECREF(value);
        }
    }
    PyObject *result = PyObject_CallOneArg(self->fallback, key);
    if (result == NULL) return -1;
    unsigned long long value = PyLong_AsUnsignedLongLong(result);
    Py_DECREF(result);
    if (value == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    *out = (uint64_t)value;
    return 0;
}

static int placement_key(JumpPlacement *self, PyObject *const *args, size_t nargsf,
                         PyObject *kwnames, uint64_t *h) {
    if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "a placement takes exactly one positional key");
        return -1;
    }
    return placement_hash(self, args[0], h);
}

static PyObject *jump_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                                 PyObject *kwnames) {
    JumpPlacement *self = (JumpPlacement *)callable;
    uint64_t h;
    if (placement_key(self, args, nargsf, kwnames, &h) < 0) return NULL;
    PyObject *name = PyTuple_GET_ITEM(self->names, jump(h, self->n));
    Py_INCREF(name);
    return name;
}

/* Highest random weight: shard i scores mix64(h ^ seed[i]); the first highest wins. The
 * weighted score is -w / log(u) with u = (mix64(...) + 0.5) / 2**64, as in Python: the
 * uint64 -> double conversion rounds to nearest, and log is the C library's, which
 * Python's math.log calls for every positive finite argument. */
static PyObject *rendezvous_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                                       PyObject *kwnames) {
    JumpPlacement *self = (JumpPlacement *)callable;
    uint64_t h;
    if (placement_key(self, args, nargsf, kwnames, &h) < 0) return NULL;
    Py_ssize_t owner = 0;
    if (self->weights == NULL) {
        uint64_t best = mix64(h ^ self->seeds[0]);
        for (Py_ssize_t i = 1; i < self->n; i++) {
            uint64_t score = mix64(h ^ self->seeds[i]);
            if (score > best) {
                best = score;
                owner = i;
            }
        }
    } else {
        double best = -1.0;
        for (Py_ssize_t i = 0; i < self->n; i++) {
            double u = ((double)mix64(h ^ self->seeds[i]) + 0.5) / 18446744073709551616.0;
            double score = -self->weights[i] / log(u);
            if (score > best) {
                best = score;
                owner = i;
            }
        }
    }
    PyObject *name = PyTuple_GET_ITEM(self->names, owner);
    Py_INCREF(name);
    return name;
}

static PyObject *table_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                                  PyObject *kwnames) {
    JumpPlacement *self = (JumpPlacement *)callable;
    uint64_t h;
    if (placement_key(self, args, nargsf, kwnames, &h) < 0) return NULL;
    PyObject *name = PyTuple_GET_ITEM(self->names, self->table[h % (uint64_t)self->table_size]);
    Py_INCREF(name);
    return name;
}

static JumpPlacement *placement_alloc(PyTypeObject *type, PyObject *names, PyObject *fallback,
                                      PyObject *uuid_type, vectorcallfunc call) {
    Py_ssize_t n = PyTuple_GET_SIZE(names);
    if (n < 1 || n > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "names must hold 1 to 2**31 - 1 shard names");
        return NULL;
    }
    if (!PyCallable_Check(fallback)) {
        PyErr_SetString(PyExc_TypeError, "fallback must be callable");
        return NULL;
    }
    JumpPlacement *self = (JumpPlacement *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    self->vectorcall = call;
    Py_INCREF(names);
    self->names = names;
    Py_INCREF(fallback);
    self->fallback = fallback;
    Py_INCREF(uuid_type);
    self->uuid_type = uuid_type;
    self->n = n;
    self->seeds = NULL;
    self->weights = NULL;
    self->table = NULL;
    self->table_size = 0;
    return self;
}

static PyObject *jump_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *names, *fallback, *uuid_type;
    static char *keywords[] = {"names", "fallback", "uuid_type", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!OO:JumpPlacement", keywords, &PyTuple_Type,
                                     &names, &fallback, &uuid_type))
        return NULL;
    return (PyObject *)placement_alloc(type, names, fallback, uuid_type, jump_vectorcall);
}

static PyObject *rendezvous_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *names, *seeds, *weights, *fallback, *uuid_type;
    static char *keywords[] = {"names", "seeds", "weights", "fallback", "uuid_type", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!OOO:RendezvousPlacement", keywords,
                                     &PyTuple_Type, &names, &PyTuple_Type, &seeds, &weights,
                                     &fallback, &uuid_type))
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(names);
    if (PyTuple_GET_SIZE(seeds) != n ||
        (weights != Py_None && (!PyTuple_Check(weights) || PyTuple_GET_SIZE(weights) != n))) {
        PyErr_SetString(PyExc_ValueError, "seeds and weights (or None) need one item per name");
        return NULL;
    }
    JumpPlacement *self = placement_alloc(type, names, fallback, uuid_type, rendezvous_vectorcall);
    if (self == NULL) return NULL;
    self->seeds = PyMem_Malloc(sizeof(uint64_t) * (size_t)n);
    if (self->seeds == NULL) goto nomemory;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned long long seed = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(seeds, i));
        if (seed == (unsigned long long)-1 && PyErr_Occurred()) goto fail;
        self->seeds[i] = (uint64_t)seed;
    }
    if (weights != Py_None) {
        self->weights = PyMem_Malloc(sizeof(double) * (size_t)n);
        if (self->weights == NULL) goto nomemory;
        for (Py_ssize_t i = 0; i < n; i++) {
            double weight = PyFloat_AsDouble(PyTuple_GET_ITEM(weights, i));
            if (weight == -1.0 && PyErr_Occurred()) goto fail;
            if (!(weight > 0.0) || !isfinite(weight)) {
                PyErr_SetString(PyExc_ValueError, "weights must be finite and > 0");
                goto fail;
            }
            self->weights[i] = weight;
        }
    }
    return (PyObject *)self;
nomemory:
    PyErr_NoMemory();
fail:
    Py_DECREF(self);
    return NULL;
}

static int placement_traverse(JumpPlacement *self, visitproc visit, void *arg) {
    Py_VISIT(self->names);
    Py_VISIT(self->fallback);
    Py_VISIT(self->uuid_type);
    return 0;
}

static int placement_clear(JumpPlacement *self) {
    Py_CLEAR(self->names);
    Py_CLEAR(self->fallback);
    Py_CLEAR(self->uuid_type);
    return 0;
}

static void placement_dealloc(JumpPlacement *self) {
    PyObject_GC_UnTrack(self);
    placement_clear(self);
    PyMem_Free(self->seeds);
    PyMem_Free(self->weights);
    PyMem_Free(self->table);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *placement_repr(JumpPlacement *self) {
    const char *name = strrchr(Py_TYPE(self)->tp_name, '.');
    return PyUnicode_FromFormat("<%s over %zd shards>", name + 1, self->n);
}

static PyObject *table_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *names, *table, *fallback, *uuid_type;
    static char *keywords[] = {"names", "table", "fallback", "uuid_type", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!OOO:TablePlacement", keywords, &PyTuple_Type,
                                     &names, &table, &fallback, &uuid_type))
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(table, &view, PyBUF_FORMAT) < 0) return NULL;
    int ok = view.itemsize == 4 && view.format != NULL && strchr("IL", view.format[0]) != NULL &&
             view.len >= 4;
    if (!ok) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_TypeError, "table must be a non-empty array('I') of shard indexes");
        return NULL;
    }
    JumpPlacement *self = placement_alloc(type, names, fallback, uuid_type, table_vectorcall);
    if (self == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    self->table_size = view.len / 4;
    self->table = PyMem_Malloc((size_t)view.len);
    if (self->table == NULL) {
        PyBuffer_Release(&view);
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    memcpy(self->table, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    for (Py_ssize_t i = 0; i < self->table_size; i++) {
        if (self->table[i] >= (uint32_t)self->n) {
            PyErr_SetString(PyExc_ValueError, "table holds an index past the last shard name");
            Py_DECREF(self);
            return NULL;
        }
    }
    return (PyObject *)self;
}

/* The placement types differ only in name, doc and constructor. */
#define PLACEMENT_TYPE(NAME, DOC, NEW)                                                    \
    {                                                                                     \
        PyVarObject_HEAD_INIT(NULL, 0).tp_name = "scalekit._speedups." NAME,              \
        .tp_doc = DOC, .tp_basicsize = sizeof(JumpPlacement),                             \
        .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL, \
        .tp_new = NEW, .tp_dealloc = (destructor)placement_dealloc,                       \
        .tp_traverse = (traverseproc)placement_traverse,                                  \
        .tp_clear = (inquiry)placement_clear, .tp_repr = (reprfunc)placement_repr,        \
        .tp_call = PyVectorcall_Call,                                                     \
        .tp_vectorcall_offset = offsetof(JumpPlacement, vectorcall),                      \
    }

static PyTypeObject JumpPlacementType = PLACEMENT_TYPE(
    "JumpPlacement", "JumpPlacement(names, fallback, uuid_type): key -> shard name by jump hash.",
    jump_new);

static PyTypeObject RendezvousPlacementType = PLACEMENT_TYPE(
    "RendezvousPlacement",
    "RendezvousPlacement(names, seeds, weights, fallback, uuid_type): key -> shard name by "
    "highest random weight (weights: a tuple of floats, or None).",
    rendezvous_new);

static PyTypeObject TablePlacementType = PLACEMENT_TYPE(
    "TablePlacement",
    "TablePlacement(names, table, fallback, uuid_type): key -> names[table[key_hash % "
    "len(table)]] (table: an array('I') of shard indexes).",
    table_new);

/* Maglev's table (Eisenbud et al., NSDI 2016): shards take turns claiming their next
 * preferred free slot, (offset + j * skip) % size, until every slot has an owner. */
static PyObject *py_maglev_table(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyTuple_Check(args[0]) || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "maglev_table(offsets, skips, size): two tuples, an int");
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(args[0]);
    Py_ssize_t size = PyLong_AsSsize_t(args[2]);
    if (size == -1 && PyErr_Occurred()) return NULL;
    if (n < 1 || PyTuple_GET_SIZE(args[1]) != n || size < n || size > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "maglev_table needs 1 <= shards <= size < 2**31");
        return NULL;
    }
    uint64_t *offsets = PyMem_Malloc(sizeof(uint64_t) * 3 * (size_t)n);
    uint32_t *table = PyMem_Malloc(sizeof(uint32_t) * (size_t)size);
    if (offsets == NULL || table == NULL) {
        PyMem_Free(offsets);
        PyMem_Free(table);
        return PyErr_NoMemory();
    }
    uint64_t *skips = offsets + n, *next = offsets + 2 * n;
    for (Py_ssize_t i = 0; i < n; i++) {
        offsets[i] = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(args[0], i));
        skips[i] = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(args[1], i));
        next[i] = 0;
        if (PyErr_Occurred() || offsets[i] >= (uint64_t)size || skips[i] == 0 ||
            skips[i] >= (uint64_t)size) {
            PyMem_Free(offsets);
            PyMem_Free(table);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "offsets in [0, size), skips in [1, size)");
            return NULL;
        }
    }
    memset(table, 0xFF, sizeof(uint32_t) * (size_t)size);
    Py_ssize_t filled = 0;
    while (filled < size) {
        for (Py_ssize_t i = 0; i < n && filled < size; i++) {
            uint64_t slot = (offsets[i] + next[i] * skips[i]) % (uint64_t)size;
            while (table[slot] != UINT32_MAX) {
                if (++next[i] >= (uint64_t)size) { /* the walk repeats: size is not prime */
                    PyMem_Free(offsets);
                    PyMem_Free(table);
                    PyErr_SetString(PyExc_ValueError, "size must be prime");
                    return NULL;
                }
                slot = (offsets[i] + next[i] * skips[i]) % (uint64_t)size;
            }
            table[slot] = (uint32_t)i;
            next[i]++;
            filled++;
        }
    }
    PyObject *result = PyBytes_FromStringAndSize((const char *)table,
                                                 (Py_ssize_t)(sizeof(uint32_t) * (size_t)size));
    PyMem_Free(offsets);
    PyMem_Free(table);
    return result;
}

/* ---- PostgreSQL's lookup3 (src/common/hashfn.c), the extended (seeded, 64-bit) forms ------ */

static inline uint32_t rotl32(uint32_t x, unsigned k) { return (x << k) | (x >> (32 - k)); }

#define PG_MIX(a, b, c)                       \
    do {                                      \
        a -= c; a ^= rotl32(c, 4); c += b;    \
        b -= a; b ^= rotl32(a, 6); a += c;    \
        c -= b; c ^= rotl32(b, 8); b += a;    \
        a -= c; a ^= rotl32(c, 16); c += b;   \
        b -= a; b ^= rotl32(a, 19); a += c;   \
        c -= b; c ^= rotl32(b, 4); b += a;    \
    } while (0)

static inline uint64_t pg_final(uint32_t a, uint32_t b, uint32_t c) {
    c ^= b; c -= rotl32(b, 14);
    a ^= c; a -= rotl32(c, 11);
    b ^= a; b -= rotl32(a, 25);
    c ^= b; c -= rotl32(b, 16);
    a ^= c; a -= rotl32(c, 4);
    b ^= a; b -= rotl32(a, 14);
    c ^= b; c -= rotl32(b, 24);
    return ((uint64_t)b << 32) | c;
}

static inline uint32_t load32_le(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

/* Little-endian bytes p[0..n) (n < 4) as an integer. */
static inline uint32_t load_tail(const uint8_t *p, size_t n) {
    uint32_t v = 0;
    for (size_t i = 0; i < n; i++) v |= (uint32_t)p[i] << (8 * i);
    return v;
}

/* lookup3's initial state for a `len`-byte input, with the extended forms' seed mixed in. */
static inline void pg_start(uint32_t *a, uint32_t *b, uint32_t *c, size_t len, uint64_t seed) {
    uint32_t x = 0x9e3779b9U + (uint32_t)len + 3923095U, y = x, z = x;
    if (seed != 0) {
        x += (uint32_t)(seed >> 32);
        y += (uint32_t)seed;
        PG_MIX(x, y, z);
    }
    *a = x;
    *b = y;
    *c = z;
}

static uint64_t pg_hash_bytes(const uint8_t *k, size_t len, uint64_t seed) {
    uint32_t a, b, c;
    pg_start(&a, &b, &c, len, seed);
    while (len >= 12) {
        a += load32_le(k);
        b += load32_le(k + 4);
        c += load32_le(k + 8);
        PG_MIX(a, b, c);
        k += 12;
        len -= 12;
    }
    /* the lowest byte of c holds the length: c's tail starts at bit 8 */
    if (len > 8) c += load_tail(k + 8, len - 8) << 8;
    if (len > 4) b += len >= 8 ? load32_le(k + 4) : load_tail(k + 4, len - 4);
    if (len > 0) a += len >= 4 ? load32_le(k) : load_tail(k, len);
    return pg_final(a, b, c);
}

static uint64_t pg_hash_int8(int64_t value, uint64_t seed) {
    uint32_t low = (uint32_t)value, high = (uint32_t)((uint64_t)value >> 32);
    low ^= value >= 0 ? high : ~high;
    uint32_t a, b, c;
    pg_start(&a, &b, &c, sizeof(uint32_t), seed);
    a += low;
    return pg_final(a, b, c);
}

/* The (first argument, seed) pair of the pg_hash_* functions; 0 on success. */
static int pg_hash_args(PyObject *const *args, Py_ssize_t nargs, const char *usage,
                        unsigned long long *seed) {
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "%s takes two arguments", usage);
        return -1;
    }
    *seed = PyLong_AsUnsignedLongLong(args[1]);
    return *seed == (unsigned long long)-1 && PyErr_Occurred() ? -1 : 0;
}

static PyObject *py_pg_hash_bytes(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    unsigned long long seed;
    if (pg_hash_args(args, nargs, "pg_hash_bytes_extended(data, seed)", &seed) < 0) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    uint64_t h = pg_hash_bytes((const uint8_t *)view.buf, (size_t)view.len, (uint64_t)seed);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(h);
}

static PyObject *py_pg_hash_int8(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    unsigned long long seed;
    if (pg_hash_args(args, nargs, "pg_hash_int8_extended(value, seed)", &seed) < 0) return NULL;
    long long value = PyLong_AsLongLong(args[0]);
    if (value == -1 && PyErr_Occurred()) return NULL;
    return PyLong_FromUnsignedLongLong(pg_hash_int8((int64_t)value, (uint64_t)seed));
}

/* ---- module functions (exposed for the equivalence tests) ---------------------------- */

static PyObject *py_blake2b_64(PyObject *module, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    uint64_t h = blake2b_64((const uint8_t *)view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(h);
}

static PyObject *py_jump_hash(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "jump_hash(key, buckets) takes two arguments");
        return NULL;
    }
    unsigned long long key = PyLong_AsUnsignedLongLongMask(args[0]);
    if (key == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    Py_ssize_t buckets = PyLong_AsSsize_t(args[1]);
    if (buckets == -1 && PyErr_Occurred()) return NULL;
    if (buckets < 1 || buckets > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "buckets must be in [1, 2**31)");
        return NULL;
    }
    return PyLong_FromSsize_t(jump((uint64_t)key, buckets));
}

static PyMethodDef speedups_methods[] = {
    {"blake2b_64", (PyCFunction)py_blake2b_64, METH_O,
     "int.from_bytes(blake2b(data, digest_size=8).digest(), 'little')."},
    {"jump_hash", (PyCFunction)(void (*)(void))py_jump_hash, METH_FASTCALL,
     "Lamping and Veach's jump consistent hash; buckets in [1, 2**31)."},
    {"maglev_table", (PyCFunction)(void (*)(void))py_maglev_table, METH_FASTCALL,
     "Maglev's lookup table as native uint32 bytes: maglev_table(offsets, skips, size)."},
    {"pg_hash_bytes_extended", (PyCFunction)(void (*)(void))py_pg_hash_bytes, METH_FASTCALL,
     "PostgreSQL's hash_bytes_extended(data, seed), unsigned."},
    {"pg_hash_int8_extended", (PyCFunction)(void (*)(void))py_pg_hash_int8, METH_FASTCALL,
     "PostgreSQL's hashint8extended(value, seed), unsigned."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "scalekit._speedups",
    .m_doc = "Optional compiled hot paths of scalekit (pure-Python twins define the results).",
    .m_size = -1,
    .m_methods = speedups_methods,
};

PyMODINIT_FUNC PyInit__speedups(void) {
    if (PyType_Ready(&JumpPlacementType) < 0 || PyType_Ready(&RendezvousPlacementType) < 0 ||
        PyType_Ready(&TablePlacementType) < 0)
        return NULL;
    int_attr = PyUnicode_InternFromString("int");
    if (int_attr == NULL) return NULL;
    PyObject *module = PyModule_Create(&speedups_module);
    if (module == NULL) return NULL;
    if (PyModule_AddObjectRef(module, "JumpPlacement", (PyObject *)&JumpPlacementType) < 0 ||
        PyModule_AddObjectRef(module, "RendezvousPlacement",
                              (PyObject *)&RendezvousPlacementType) < 0 ||
        PyModule_AddObjectRef(module, "TablePlacement", (PyObject *)&TablePlacementType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
