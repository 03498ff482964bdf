/*
 * Ristretto255 group operations on libdecaf's public API, and Keccak-f[1600].
 *
 * libdecaf's decaf_255 is Ristretto255 (encoding, decoding and the one-way map of
 * RFC 9496). Points stay in libdecaf's internal form inside a `Points` object (a batch),
 * so a range proof crosses the Python/C boundary a few dozen times instead of once per
 * group operation. What is here and why:
 *
 *   decode / from_hash / Points.encode   batches of 32-byte encodings / 64-byte strings
 *   msm_ct        Σ sᵢ·Pᵢ in constant time (signed radix-16 Straus, masked table lookups):
 *                 for secret scalars (blindings, S's random vectors, the commitments)
 *   msm_vartime   Σ sᵢ·Pᵢ in variable time (wNAF Straus, width 5, or wider for batches given
 *                 to `precompute`): for public scalars (inner-product L/R, folds, verification)
 *   select_sum    Σ (bitᵢ ? Pᵢ : Qᵢ) in constant time: the bit commitment A
 *   fold          Pᵢ + rᵢ·P_{k+i} (variable time): the inner-product generator fold
 *   precompute    build a batch's lookup tables now (the generators, once per process)
 *   keccak_f1600  the permutation under Merlin's STROBE-128, in place on 200 bytes
 *
 * Every input length is checked before memory is touched; a bad input raises ValueError
 * (or TypeError for a wrong type), never crashes. Per-point lookup tables are cached on
 * the Points object, so the fixed generators pay for theirs once per process.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <decaf.h>

#define SER 32            /* bytes of a point encoding or a scalar */
#define HASH 64           /* bytes the one-way map takes */
#define TABLE 8           /* entries of the constant-time table */
#define CT_DIGITS 64      /* signed radix-16 digits of a scalar < 2^253 */
#define NAF_LEN 256
#define NAF_WIDTH 5       /* wNAF width of a batch's table unless `precompute` widened it */
#define NAF_WIDTH_MAX 8

typedef struct decaf_255_point_s point_s;

/* ---- Points: a batch of internal points, with lazily built lookup tables ---- */

typedef struct {
    PyObject_HEAD
    Py_ssize_t n;
    point_s *pts;
    point_s *ct_table;  /* n × {1P … 8P}: constant-time lookups */
    point_s *vt_table;  /* n × {1P, 3P … (2^(w−1) − 1)P}: wNAF digits of width w */
    int vt_width;       /* w, 0 before the table is built */
} PointsObject;

static PyTypeObject PointsType;
static inline Py_ssize_t vt_entries(int width);

static point_s *alloc_points(Py_ssize_t count) {
    if (count < 0 || (size_t)count > SIZE_MAX / sizeof(point_s) / 2) {
        PyErr_NoMemory();
        return NULL;
    }
    size_t size = (size_t)(count ? count : 1) * sizeof(point_s);
    void *mem = NULL;
    if (posix_memalign(&mem, 64, size) != 0) {
        PyErr_NoMemory();
        return NULL;
    }
    return (point_s *)mem;
}

static void free_points(point_s *pts, Py_ssize_t count) {
    if (pts == NULL) return;
    /* Points can be secret intermediate values (A's bit selections): wipe them. */
    for (Py_ssize_t i = 0; i < count; i++) decaf_255_point_destroy(&pts[i]);
    free(pts);
}

static PointsObject *new_points(Py_ssize_t n) {
    PointsObject *self = PyObject_New(PointsObject, &PointsType);
    if (self == NULL) return NULL;
    self->n = n;
    self->ct_table = NULL;
    self->vt_table = NULL;
    self->vt_width = 0;
    self->pts = alloc_points(n);
    if (self->pts == NULL) {
        self->n = 0;
        Py_DECREF(self);
        return NULL;
    }
    return self;
}

static void points_dealloc(PointsObject *self) {
    free_points(self->pts, self->n);
    free_points(self->ct_table, self->n * TABLE);
    free_points(self->vt_table, self->n * vt_entries(self->vt_width));
    PyObject_Free(self);
}

static Py_ssize_t points_len(PointsObject *self) { return self->n; }

static inline Py_ssize_t vt_entries(int width) { return width ? (Py_ssize_t)1 << (width - 2) : 0; }

static int ensure_ct_table(PointsObject *self) {
    if (self->ct_table != NULL) return 0;
    point_s *t = alloc_points(self->n * TABLE);
    if (t == NULL) return -1;
    for (Py_ssize_t i = 0; i < self->n; i++) {
        point_s *row = &t[i * TABLE];
        decaf_255_point_copy(&row[0], &self->pts[i]);
        for (int j = 1; j < TABLE; j++) decaf_255_point_add(&row[j], &row[j - 1], &self->pts[i]);
    }
    self->ct_table = t;
    return 0;
}

static int build_vt_table(PointsObject *self, int width) {
    Py_ssize_t entries = vt_entries(width);
    point_s *t = alloc_points(self->n * entries);
    if (t == NULL) return -1;
    decaf_255_point_t twice;
    for (Py_ssize_t i = 0; i < self->n; i++) {
        point_s *row = &t[i * entries];
        decaf_255_point_copy(&row[0], &self->pts[i]);
        decaf_255_point_double(twice, &self->pts[i]);
        for (Py_ssize_t j = 1; j < entries; j++) decaf_255_point_add(&row[j], &row[j - 1], twice);
    }
    free_points(self->vt_table, self->n * vt_entries(self->vt_width));
    self->vt_table = t;
    self->vt_width = width;
    return 0;
}

static int ensure_vt_table(PointsObject *self) {
    return self->vt_table != NULL ? 0 : build_vt_table(self, NAF_WIDTH);
}

static PyObject *points_encode(PointsObject *self, PyObject *Py_UNUSED(ignored)) {
    PyObject *out = PyBytes_FromStringAndSize(NULL, self->n * SER);
    if (out == NULL) return NULL;
    uint8_t *buf = (uint8_t *)PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < self->n; i++) decaf_255_point_encode(buf + i * SER, &self->pts[i]);
    return out;
}

static PyMethodDef points_methods[] = {
    {"encode", (PyCFunction)points_encode, METH_NOARGS,
     "encode() -> bytes: the canonical 32-byte encodings, concatenated."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods points_as_sequence = {
    .sq_length = (lenfunc)points_len,
};

static PyTypeObject PointsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "stamp.crypto._decaf.Points",
    .tp_doc = "A batch of Ristretto255 points in libdecaf's internal form (opaque).",
    .tp_basicsize = sizeof(PointsObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)points_dealloc,
    .tp_as_sequence = &points_as_sequence,
    .tp_methods = points_methods,
};

/* ---- argument helpers ---- */

/* A read-only contiguous buffer whose length is a multiple of `unit` (and exactly
   `expected` bytes when expected >= 0). Sets ValueError and returns -1 otherwise. */
static int get_buffer(PyObject *obj, Py_buffer *view, Py_ssize_t unit, Py_ssize_t expected, const char *what) {
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) != 0) return -1;
    if ((expected >= 0 && view->len != expected) || view->len % unit != 0) {
        PyErr_Format(PyExc_ValueError, "%s: wrong length %zd", what, view->len);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* A tuple or list of Points objects; fills `batches` (borrowed) and the total count. */
static PyObject *get_batches(PyObject *seq, Py_ssize_t *total) {
    PyObject *fast = PySequence_Fast(seq, "points must be a sequence of Points");
    if (fast == NULL) return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(fast);
    *total = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(fast, i);
        if (!PyObject_TypeCheck(item, &PointsType)) {
            Py_DECREF(fast);
            PyErr_SetString(PyExc_TypeError, "points must be Points objects");
            return NULL;
        }
        *total += ((PointsObject *)item)->n;
    }
    return fast;
}

/* Canonical scalars (< ℓ) only: reducing silently would hide a caller's mistake. */
static int check_scalars(const uint8_t *data, Py_ssize_t count) {
    decaf_255_scalar_t s;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (decaf_255_scalar_decode(s, data + i * SER) != DECAF_SUCCESS) {
            decaf_255_scalar_destroy(s);
            PyErr_Format(PyExc_ValueError, "scalar %zd is not canonical (>= l)", i);
            return -1;
        }
    }
    decaf_255_scalar_destroy(s);
    return 0;
}

/* ---- constant-time helpers ---- */

static inline uint64_t ct_eq_mask(uint32_t a, uint32_t b) {
    uint64_t x = (uint64_t)(a ^ b);
    return ((x - 1) >> 63) * UINT64_MAX;  /* all ones when a == b */
}

static inline void ct_copy(point_s *dst, const point_s *src, uint64_t mask) {
    uint64_t *d = (uint64_t *)dst;
    const uint64_t *s = (const uint64_t *)src;
    for (size_t i = 0; i < sizeof(point_s) / sizeof(uint64_t); i++) d[i] ^= (d[i] ^ s[i]) & mask;
}

/* out = digit·P from row = {1P … 8P}, digit in [-8, 8], reading every entry. */
static void ct_lookup(point_s *out, const point_s *row, int8_t digit) {
    int32_t d = digit;
    uint32_t sign = (uint32_t)d >> 31;
    uint32_t magnitude = (uint32_t)((d ^ -(int32_t)sign) + (int32_t)sign);
    decaf_255_point_copy(out, decaf_255_point_identity);
    for (uint32_t j = 1; j <= TABLE; j++) ct_copy(out, &row[j - 1], ct_eq_mask(magnitude, j));
    decaf_255_point_t negated;
    decaf_255_point_negate(negated, out);
    ct_copy(out, negated, (uint64_t)0 - sign);
}

/* 64 signed radix-16 digits in [-8, 8) (the last ≤ 8) of a scalar < 2^253, in constant time. */
static void radix16(int8_t digits[CT_DIGITS], const uint8_t s[SER]) {
    for (int i = 0; i < SER; i++) {
        digits[2 * i] = (int8_t)(s[i] & 15);
        digits[2 * i + 1] = (int8_t)(s[i] >> 4);
    }
    for (int i = 0; i < CT_DIGITS - 1; i++) {
        int8_t carry = (int8_t)((digits[i] + 8) >> 4);
        digits[i] = (int8_t)(digits[i] - (carry << 4));
        digits[i + 1] = (int8_t)(digits[i + 1] + carry);
    }
}

/* Width-w NAF: digits odd in [−2^(w−1)+1, 2^(w−1)−1] or 0, nonzero digits at least w apart.
   Variable time. */
static void wnaf(int8_t naf[NAF_LEN], const uint8_t s[SER], int w) {
    uint64_t limbs[5] = {0, 0, 0, 0, 0};
    for (int i = 0; i < SER; i++) limbs[i / 8] |= (uint64_t)s[i] << (8 * (i % 8));
    memset(naf, 0, NAF_LEN);
    const uint64_t width = (uint64_t)1 << w, mask = width - 1;
    uint64_t carry = 0;
    int pos = 0;
    while (pos < NAF_LEN) {
        int idx = pos / 64, bit = pos % 64;
        uint64_t buf = bit < 64 - w ? limbs[idx] >> bit
                                            : (limbs[idx] >> bit) | (limbs[idx + 1] << (64 - bit));
        uint64_t value = carry + (buf & mask);
        if ((value & 1) == 0) {
            pos += 1;
            continue;
        }
        if (value < width / 2) {
            carry = 0;
            naf[pos] = (int8_t)value;
        } else {
            carry = 1;
            naf[pos] = (int8_t)((int64_t)value - (int64_t)width);
        }
        pos += w;
    }
}

/* ---- group entry points ---- */

static PyObject *decaf_decode(PyObject *Py_UNUSED(module), PyObject *arg) {
    Py_buffer view;
    if (get_buffer(arg, &view, SER, -1, "point encodings") != 0) return NULL;
    Py_ssize_t n = view.len / SER;
    PointsObject *out = new_points(n);
    if (out != NULL) {
        const uint8_t *data = (const uint8_t *)view.buf;
        for (Py_ssize_t i = 0; i < n; i++) {
            /* RFC 9496 decoding: rejects non-canonical field elements, bit 255 included. */
            if (decaf_255_point_decode(&out->pts[i], data + i * SER, DECAF_TRUE) != DECAF_SUCCESS) {
                PyErr_Format(PyExc_ValueError, "point %zd is not a canonical Ristretto255 encoding", i);
                Py_CLEAR(out);
                break;
            }
        }
    }
    PyBuffer_Release(&view);
    return (PyObject *)out;
}

static PyObject *decaf_from_hash(PyObject *Py_UNUSED(module), PyObject *arg) {
    Py_buffer view;
    if (get_buffer(arg, &view, HASH, -1, "one-way map input") != 0) return NULL;
    Py_ssize_t n = view.len / HASH;
    PointsObject *out = new_points(n);
    if (out != NULL) {
        for (Py_ssize_t i = 0; i < n; i++)
            decaf_255_point_from_hash_uniform(&out->pts[i], (const uint8_t *)view.buf + i * HASH);
    }
    PyBuffer_Release(&view);
    return (PyObject *)out;
}

static PyObject *decaf_negate(PyObject *Py_UNUSED(module), PyObject *arg) {
    if (!PyObject_TypeCheck(arg, &PointsType)) {
        PyErr_SetString(PyExc_TypeError, "negate takes Points");
        return NULL;
    }
    PointsObject *in = (PointsObject *)arg;
    PointsObject *out = new_points(in->n);
    if (out == NULL) return NULL;
    for (Py_ssize_t i = 0; i < in->n; i++) decaf_255_point_negate(&out->pts[i], &in->pts[i]);
    return (PyObject *)out;
}

/* Parses (scalars, batches) for both MSMs; on success the caller owns view and *fast. */
static int msm_args(PyObject *args, Py_buffer *view, PyObject **fast, Py_ssize_t *total) {
    PyObject *scalars, *batches;
    if (!PyArg_ParseTuple(args, "OO", &scalars, &batches)) return -1;
    *fast = get_batches(batches, total);
    if (*fast == NULL) return -1;
    if (get_buffer(scalars, view, SER, *total * SER, "scalars (32 bytes per point)") != 0) {
        Py_DECREF(*fast);
        return -1;
    }
    if (check_scalars((const uint8_t *)view->buf, *total) != 0) {
        PyBuffer_Release(view);
        Py_DECREF(*fast);
        return -1;
    }
    return 0;
}

static PyObject *decaf_msm_ct(PyObject *Py_UNUSED(module), PyObject *args) {
    Py_buffer view;
    PyObject *fast;
    Py_ssize_t total;
    if (msm_args(args, &view, &fast, &total) != 0) return NULL;
    PointsObject *out = NULL;
    int8_t *digits = PyMem_Malloc((size_t)(total ? total : 1) * CT_DIGITS);
    const point_s **rows = PyMem_Malloc((size_t)(total ? total : 1) * sizeof(point_s *));
    if (digits == NULL || rows == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t k = 0;
    for (Py_ssize_t b = 0; b < PySequence_Fast_GET_SIZE(fast); b++) {
        PointsObject *batch = (PointsObject *)PySequence_Fast_GET_ITEM(fast, b);
        if (ensure_ct_table(batch) != 0) goto done;
        for (Py_ssize_t i = 0; i < batch->n; i++, k++) {
            rows[k] = &batch->ct_table[i * TABLE];
            radix16(&digits[k * CT_DIGITS], (const uint8_t *)view.buf + k * SER);
        }
    }
    out = new_points(1);
    if (out == NULL) goto done;
    point_s *acc = &out->pts[0];
    decaf_255_point_t term;
    decaf_255_point_copy(acc, decaf_255_point_identity);
    for (int w = CT_DIGITS - 1; w >= 0; w--) {
        if (w != CT_DIGITS - 1)
            for (int d = 0; d < 4; d++) decaf_255_point_double(acc, acc);
        for (Py_ssize_t j = 0; j < total; j++) {
            ct_lookup(term, rows[j], digits[j * CT_DIGITS + w]);
            decaf_255_point_add(acc, acc, term);
        }
    }
    decaf_255_point_destroy(term);
done:
    if (digits != NULL) {
        memset(digits, 0, (size_t)(total ? total : 1) * CT_DIGITS);  /* secret scalars */
        PyMem_Free(digits);
    }
    PyMem_Free(rows);
    PyBuffer_Release(&view);
    Py_DECREF(fast);
    return (PyObject *)out;
}

/* Σ sⱼ·Pⱼ in variable time over `total` wNAF rows; acc receives the sum. */
static void straus_vartime(point_s *acc, const int8_t *nafs, const point_s *const *rows, Py_ssize_t total) {
    int top = -1;
    for (Py_ssize_t j = 0; j < total; j++)
        for (int i = NAF_LEN - 1; i > top; i--)
            if (nafs[j * NAF_LEN + i] != 0) {
                top = i;
                break;
            }
    decaf_255_point_copy(acc, decaf_255_point_identity);
    for (int i = top; i >= 0; i--) {
        if (i != top) decaf_255_point_double(acc, acc);
        for (Py_ssize_t j = 0; j < total; j++) {
            int8_t d = nafs[j * NAF_LEN + i];
            if (d > 0)
                decaf_255_point_add(acc, acc, &rows[j][d / 2]);
            else if (d < 0)
                decaf_255_point_sub(acc, acc, &rows[j][-d / 2]);
        }
    }
}

static PyObject *decaf_msm_vartime(PyObject *Py_UNUSED(module), PyObject *args) {
    Py_buffer view;
    PyObject *fast;
    Py_ssize_t total;
    if (msm_args(args, &view, &fast, &total) != 0) return NULL;
    PointsObject *out = NULL;
    int8_t *nafs = PyMem_Malloc((size_t)(total ? total : 1) * NAF_LEN);
    const point_s **rows = PyMem_Malloc((size_t)(total ? total : 1) * sizeof(point_s *));
    if (nafs == NULL || rows == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t k = 0;
    for (Py_ssize_t b = 0; b < PySequence_Fast_GET_SIZE(fast); b++) {
        PointsObject *batch = (PointsObject *)PySequence_Fast_GET_ITEM(fast, b);
        if (ensure_vt_table(batch) != 0) goto done;
        for (Py_ssize_t i = 0; i < batch->n; i++, k++) {
            rows[k] = &batch->vt_table[i * vt_entries(batch->vt_width)];
            wnaf(&nafs[k * NAF_LEN], (const uint8_t *)view.buf + k * SER, batch->vt_width);
        }
    }
    out = new_points(1);
    if (out != NULL) straus_vartime(&out->pts[0], nafs, rows, total);
done:
    PyMem_Free(nafs);
    PyMem_Free(rows);
    PyBuffer_Release(&view);
    Py_DECREF(fast);
    return (PyObject *)out;
}

static PyObject *decaf_select_sum(PyObject *Py_UNUSED(module), PyObject *args) {
    PyObject *bits_obj;
    PointsObject *ones, *zeros;
    if (!PyArg_ParseTuple(args, "OO!O!", &bits_obj, &PointsType, &ones, &PointsType, &zeros)) return NULL;
    if (ones->n != zeros->n) {
        PyErr_SetString(PyExc_ValueError, "select_sum: the two batches differ in length");
        return NULL;
    }
    Py_buffer view;
    if (get_buffer(bits_obj, &view, 1, ones->n, "select_sum bits (one byte per point)") != 0) return NULL;
    const uint8_t *bits = (const uint8_t *)view.buf;
    uint8_t invalid = 0;
    for (Py_ssize_t i = 0; i < ones->n; i++) invalid |= (uint8_t)(bits[i] & 0xFE);
    PointsObject *out = NULL;
    if (invalid) {
        PyErr_SetString(PyExc_ValueError, "select_sum bits must be 0 or 1");
    } else if ((out = new_points(1)) != NULL) {
        decaf_255_point_t term;
        decaf_255_point_copy(&out->pts[0], decaf_255_point_identity);
        for (Py_ssize_t i = 0; i < ones->n; i++) {
            decaf_255_point_copy(term, &zeros->pts[i]);
            ct_copy(term, &ones->pts[i], (uint64_t)0 - (uint64_t)bits[i]);
            decaf_255_point_add(&out->pts[0], &out->pts[0], term);
        }
        decaf_255_point_destroy(term);
    }
    PyBuffer_Release(&view);
    return (PyObject *)out;
}

static PyObject *decaf_fold(PyObject *Py_UNUSED(module), PyObject *args) {
    PointsObject *in;
    PyObject *ratios_obj;
    if (!PyArg_ParseTuple(args, "O!O", &PointsType, &in, &ratios_obj)) return NULL;
    if (in->n % 2 != 0) {
        PyErr_SetString(PyExc_ValueError, "fold: the batch must have an even length");
        return NULL;
    }
    Py_ssize_t k = in->n / 2;
    Py_buffer view;
    if (get_buffer(ratios_obj, &view, SER, k * SER, "fold ratios (32 bytes per output)") != 0) return NULL;
    if (check_scalars((const uint8_t *)view.buf, k) != 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    PointsObject *out = NULL;
    if (ensure_vt_table(in) == 0 && (out = new_points(k)) != NULL) {
        int8_t naf[NAF_LEN];
        const point_s *row[1];
        for (Py_ssize_t i = 0; i < k; i++) {
            wnaf(naf, (const uint8_t *)view.buf + i * SER, in->vt_width);
            row[0] = &in->vt_table[(k + i) * vt_entries(in->vt_width)];
            straus_vartime(&out->pts[i], naf, row, 1);
            decaf_255_point_add(&out->pts[i], &out->pts[i], &in->pts[i]);
        }
    }
    PyBuffer_Release(&view);
    return (PyObject *)out;
}

static PyObject *decaf_precompute(PyObject *Py_UNUSED(module), PyObject *args) {
    PointsObject *in;
    int width;
    if (!PyArg_ParseTuple(args, "O!i", &PointsType, &in, &width)) return NULL;
    if (width < 2 || width > NAF_WIDTH_MAX) {
        PyErr_Format(PyExc_ValueError, "precompute: width must be in 2..%d", NAF_WIDTH_MAX);
        return NULL;
    }
    if (in->vt_width != width && build_vt_table(in, width) != 0) return NULL;
    if (ensure_ct_table(in) != 0) return NULL;
    Py_RETURN_NONE;
}

/* ---- Keccak-f[1600] ---- */

static const uint64_t KECCAK_RC[24] = {
    0x0000000000000001ULL, 0x0000000000008082ULL, 0x800000000000808AULL, 0x8000000080008000ULL,
    0x000000000000808BULL, 0x0000000080000001ULL, 0x8000000080008081ULL, 0x8000000000008009ULL,
    0x000000000000008AULL, 0x0000000000000088ULL, 0x0000000080008009ULL, 0x000000008000000AULL,
    0x000000008000808BULL, 0x800000000000008BULL, 0x8000000000008089ULL, 0x8000000000008003ULL,
    0x8000000000008002ULL, 0x8000000000000080ULL, 0x000000000000800AULL, 0x800000008000000AULL,
    0x8000000080008081ULL, 0x8000000000008080ULL, 0x0000000080000001ULL, 0x8000000080008008ULL,
};
/* ρ offsets and π destinations, following lane 1 around the π cycle. */
static const unsigned KECCAK_RHO[24] = {1, 3, 6, 10, 15, 21, 28, 36, 45, 55, 2, 14,
                                        27, 41, 56, 8, 25, 43, 62, 18, 39, 61, 20, 44};
static const unsigned KECCAK_PI[24] = {10, 7, 11, 17, 18, 3, 5, 16, 8, 21, 24, 4,
                                       15, 23, 19, 13, 12, 2, 20, 14, 22, 9, 6, 1};

static inline uint64_t rotl64(uint64_t x, unsigned n) { return (x << n) | (x >> ((64 - n) & 63)); }

static void keccak_f1600_lanes(uint64_t a[25]) {
    uint64_t c[5], t;
    for (int round = 0; round < 24; round++) {
        for (int x = 0; x < 5; x++) c[x] = a[x] ^ a[x + 5] ^ a[x + 10] ^ a[x + 15] ^ a[x + 20];
        for (int x = 0; x < 5; x++) {
            t = c[(x + 4) % 5] ^ rotl64(c[(x + 1) % 5], 1);
            for (int y = 0; y < 25; y += 5) a[y + x] ^= t;
        }
        t = a[1];
        for (int i = 0; i < 24; i++) {
            unsigned j = KECCAK_PI[i];
            uint64_t next = a[j];
            a[j] = rotl64(t, KECCAK_RHO[i]);
            t = next;
        }
        for (int y = 0; y < 25; y += 5) {
            for (int x = 0; x < 5; x++) c[x] = a[y + x];
            for (int x = 0; x < 5; x++) a[y + x] = c[x] ^ (~c[(x + 1) % 5] & c[(x + 2) % 5]);
        }
        a[0] ^= KECCAK_RC[round];
    }
}

static PyObject *decaf_keccak_f1600(PyObject *Py_UNUSED(module), PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_WRITABLE) != 0) {
        if (PyErr_ExceptionMatches(PyExc_BufferError)) {
            PyErr_Clear();
            PyErr_SetString(PyExc_TypeError, "keccak_f1600 needs a writable buffer (a bytearray)");
        }
        return NULL;
    }
    if (view.len != 200) {
        PyErr_Format(PyExc_ValueError, "keccak_f1600 needs a writable 200-byte buffer, got %zd", view.len);
        PyBuffer_Release(&view);
        return NULL;
    }
    uint8_t *state = (uint8_t *)view.buf;
    uint64_t lanes[25];
    for (int i = 0; i < 25; i++) {
        uint64_t lane = 0;
        for (int b = 7; b >= 0; b--) lane = (lane << 8) | state[8 * i + b];
        lanes[i] = lane;
    }
    keccak_f1600_lanes(lanes);
    for (int i = 0; i < 25; i++)
        for (int b = 0; b < 8; b++) state[8 * i + b] = (uint8_t)(lanes[i] >> (8 * b));
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

/* ---- module ---- */

static PyMethodDef module_methods[] = {
    {"decode", decaf_decode, METH_O,
     "decode(encodings) -> Points: 32 bytes per point, canonical (RFC 9496), the identity allowed."},
    {"from_hash", decaf_from_hash, METH_O, "from_hash(data) -> Points: the one-way map of each 64 bytes."},
    {"negate", decaf_negate, METH_O, "negate(points) -> Points."},
    {"msm_ct", decaf_msm_ct, METH_VARARGS,
     "msm_ct(scalars, batches) -> Points of 1: constant-time sum; 32-byte canonical scalars, one per point."},
    {"msm_vartime", decaf_msm_vartime, METH_VARARGS,
     "msm_vartime(scalars, batches) -> Points of 1: variable-time sum, for public scalars only."},
    {"select_sum", decaf_select_sum, METH_VARARGS,
     "select_sum(bits, ones, zeros) -> Points of 1: sum of ones[i] if bits[i] else zeros[i], constant time."},
    {"fold", decaf_fold, METH_VARARGS,
     "fold(points, ratios) -> Points: points[i] + ratios[i]·points[k+i] for i < k = len/2 (variable time)."},
    {"precompute", decaf_precompute, METH_VARARGS,
     "precompute(points, width): build the lookup tables now, the variable-time one of wNAF width "
     "`width` (wider: fewer additions, more memory), for points used for the whole process."},
    {"keccak_f1600", decaf_keccak_f1600, METH_O, "keccak_f1600(state): permute 200 bytes in place."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef decaf_module = {
    PyModuleDef_HEAD_INIT, "_decaf", "Ristretto255 batches on libdecaf, and Keccak-f[1600].", -1,
    module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__decaf(void) {
    if (PyType_Ready(&PointsType) < 0) return NULL;
    PyObject *m = PyModule_Create(&decaf_module);
    if (m == NULL) return NULL;
    Py_INCREF(&PointsType);
    if (PyModule_AddObject(m, "Points", (PyObject *)&PointsType) < 0) {
        Py_DECREF(&PointsType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
