"""A line-by-line numpy transcription of the official LaSOT evaluation toolkit (MATLAB).

Reference only: our own LaSOT scorer is tested against this module. It transcribes, from
github.com/HengLan/LaSOT_Evaluation_Toolkit:

- utils/calc_rect_int.m (the OTB toolkit's calcRectInt)  -> calc_rect_int
- utils/calc_seq_err_robust.m                            -> calc_seq_err_robust
- utils/eval_tracker.m (one tracker, one sequence)       -> sequence_curves
- utils/plot_draw_save.m (the ranking score)             -> overall
- the thresholds and rank_idx of run_tracker_performance_evaluation.m / eval_tracker.m

Quirks of the MATLAB are kept on purpose and marked "QUIRK". MATLAB semantics that numpy does
not share are reproduced where they can change a result: max/min ignore NaN (np.fmax/np.fmin),
`if` on a vector means "all elements nonzero", the colon operator builds 0:0.05:1 from both ends,
eps = 2^-52, relational operators on complex numbers compare real parts only, and max/min on a
complex operand compare magnitudes. Boxes are N x 4 [x, y, w, h] arrays, 1-based or not (the
metric does not care). Only numpy is needed.
"""

import numpy as np

EPS = 2.220446049250313e-16  # MATLAB's eps (= np.finfo(float).eps)


def _matlab_colon(a, d, b):
    """a:d:b as MATLAB builds it (MathWorks solution 1-4FLI96, "How does the COLON operator work?"):
    the first half is a + k*d, the second half b - k*d, the midpoint (a+b)/2. For 0:0.05:1 this
    gives e.g. 0.6499999999999999 where np.arange(21) * 0.05 gives 0.65; it matters when an
    overlap equals a threshold exactly."""
    n = round((b - a) / d)
    assert abs(a + n * d - b) <= 2 * EPS * max(abs(a), abs(b)), (
        "only exact endpoints are needed here"
    )
    out = np.empty(n + 1)
    k = np.arange(n // 2 + 1)
    out[k] = a + k * d
    out[n - k] = b - k * d
    if n % 2 == 0:
        out[n // 2] = (a + b) / 2
    return out


# eval_tracker.m / run_tracker_performance_evaluation.m
THRESHOLDS_OVERLAP = _matlab_colon(0.0, 0.05, 1.0)  # 0:0.05:1, 21 values, counted with `>`
THRESHOLDS_ERROR = np.arange(51, dtype=float)  # 0:50, 51 values, counted with `<=`
THRESHOLDS_ERROR_NORM = THRESHOLDS_ERROR / 100  # threshold_set_error / 100 when norm_dst
# rank_idx of run_tracker_performance_evaluation.m, MATLAB 1-based: 'threshold' ranking score is
# curve[RANK_IDX - 1] (overlap 0.5 for success, 20 px / 0.2 for precision).
RANK_IDX_OVERLAP = 11
RANK_IDX_ERROR = 21


# -----------------------------------------------------------------------------
# MATLAB semantics numpy lacks


def _is_complex(x):
    # MATLAB stores an array as real whenever all its imaginary parts are zero (after indexing
    # and after arithmetic), so an operand "is complex" iff some imaginary part is nonzero.
    return np.iscomplexobj(x) and bool(np.any(np.imag(x) != 0))


def _mminmax(a, b, want_max):
    a, b = np.asarray(a), np.asarray(b)
    if not (_is_complex(a) or _is_complex(b)):
        # MATLAB max/min omit NaN: max(0, NaN) = 0, min(x, NaN) = x.
        return np.fmax(a, b) if want_max else np.fmin(a, b)
    # A complex operand: MATLAB compares magnitudes, ties broken by phase angle, NaN omitted,
    # for every element of both operands (so max(0, -3+0i) is -3 when the vector is complex).
    a, b = np.broadcast_arrays(a.astype(complex), b.astype(complex))
    ma, mb, pa, pb = np.abs(a), np.abs(b), np.angle(a), np.angle(b)
    if want_max:
        b_wins = (mb > ma) | ((mb == ma) & (pb > pa))
    else:
        b_wins = (mb < ma) | ((mb == ma) & (pb < pa))
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    take_b = (nan_a & ~nan_b) | (~nan_a & ~nan_b & b_wins)
    return np.where(take_b, b, a)


def _mmax(a, b):
    return _mminmax(a, b, True)


def _mmin(a, b):
    return _mminmax(a, b, False)


# -----------------------------------------------------------------------------
# calc_rect_int.m


def calc_rect_int(a, b):
    """Overlap (IoU) of each row of a with the same row of b, boxes [x, y, w, h], pixel-inclusive."""
    a, b = np.asarray(a), np.asarray(b)
    leftA = a[:, 0]
    bottomA = a[:, 1]
    rightA = leftA + a[:, 2] - 1  # QUIRK: pixel-inclusive boxes, right = left + w - 1
    topA = bottomA + a[:, 3] - 1

    leftB = b[:, 0]
    bottomB = b[:, 1]
    rightB = leftB + b[:, 2] - 1
    topB = bottomB + b[:, 3] - 1

    # ... hence the +1 on the intersection's sides; the areas, though, are plain w*h.
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        tmp = _mmax(0, _mmin(rightA, rightB) - _mmax(leftA, leftB) + 1) * _mmax(
            0, _mmin(topA, topB) - _mmax(bottomA, bottomB) + 1
        )
        areaA = a[:, 2] * a[:, 3]
        areaB = b[:, 2] * b[:, 3]
        overlap = tmp / (areaA + areaB - tmp)
    return overlap


# -----------------------------------------------------------------------------
# calc_seq_err_robust.m


def calc_seq_err_robust(results, rect_anno, absent_anno, norm_dst):
    """(err_coverage, err_center), one value per frame NOT flagged absent; -1 where the
    annotation row is not all > 0. Complex results are accepted (the outputs are then complex;
    compare their real parts, as MATLAB does)."""
    results = np.array(results, dtype=complex if np.iscomplexobj(results) else float, ndmin=2)
    rect_anno = np.array(rect_anno, dtype=float, ndmin=2)
    absent_anno = np.asarray(absent_anno).reshape(-1)
    seq_length = rect_anno.shape[0]

    # QUIRK: results longer than the annotation are cut to its length (monkey-17). Shorter ones
    # make MATLAB fail ("Index exceeds matrix dimensions"), and so do we.
    if results.shape[0] != rect_anno.shape[0]:
        if results.shape[0] < seq_length:
            raise IndexError(f"results have {results.shape[0]} rows, the annotation {seq_length}")
        results = results[:seq_length, :]

    # Invalid results (NaN, non-real, w <= 0, h <= 0) take the previous row, frames 2..N in order,
    # so a run of invalid rows all carry the last valid one. QUIRK: this runs before frame 1 is
    # replaced by the annotation, so frame 2 may carry the tracker's own (possibly invalid) row 1,
    # and it ignores the absent flags (absent frames are repaired and carried from too).
    for i in range(1, seq_length):
        r = results[i, :]
        r_anno = rect_anno[i, :]
        # (sum(isnan(r)) | ~isreal(r) | r(3)<=0 | r(4)<=0) is a scalar. `~isreal(r)`: the row has
        # a nonzero imaginary part (MATLAB drops all-zero imaginary parts on indexing). `<=` on a
        # complex number compares its real part.
        bad = np.sum(np.isnan(r)) != 0 or _is_complex(r) or np.real(r[2]) <= 0 or np.real(r[3]) <= 0
        # QUIRK: `bad & (~isnan(r_anno))` is a 1x4 vector and MATLAB's `if` on a vector is true
        # only when every element is nonzero: the row is repaired only when it is bad AND none of
        # the four annotation values is NaN. Next to a NaN annotation value it is left as it is.
        if np.all(np.logical_and(bad, ~np.isnan(r_anno))):
            results[i, :] = results[i - 1, :]

    rect_mat = results.copy()
    rect_mat[0, :] = rect_anno[0, :]  # QUIRK: frame 1 is the annotation, whatever the tracker said

    # QUIRK: frames whose absent flag is exactly 1 are removed from both, before anything is
    # computed. A logical index shorter than the rows is padded with false by MATLAB; a longer one
    # is fine unless it is true past the end.
    absent_idx = absent_anno == 1
    if absent_idx.size > seq_length:
        if np.any(absent_idx[seq_length:]):
            raise IndexError("absent flags mark a frame past the end of the annotation")
        absent_idx = absent_idx[:seq_length]
    absent_idx = np.concatenate([absent_idx, np.zeros(seq_length - absent_idx.size, dtype=bool)])
    rect_mat = rect_mat[~absent_idx, :]
    rect_anno = rect_anno[~absent_idx, :]

    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        # QUIRK: centre of a pixel-inclusive box, x + (w-1)/2
        center_GT = np.stack(
            [
                rect_anno[:, 0] + (rect_anno[:, 2] - 1) / 2,
                rect_anno[:, 1] + (rect_anno[:, 3] - 1) / 2,
            ],
            axis=1,
        )
        center = np.stack(
            [rect_mat[:, 0] + (rect_mat[:, 2] - 1) / 2, rect_mat[:, 1] + (rect_mat[:, 3] - 1) / 2],
            axis=1,
        )

        new_seq_length = rect_anno.shape[0]

        # QUIRK: normalised precision divides BOTH centres by the annotation's w and h (not the
        # tracker's), one axis each.
        if norm_dst:
            center[:, 0] = center[:, 0] / rect_anno[:, 2]
            center[:, 1] = center[:, 1] / rect_anno[:, 3]
            center_GT[:, 0] = center_GT[:, 0] / rect_anno[:, 2]
            center_GT[:, 1] = center_GT[:, 1] / rect_anno[:, 3]
        s = np.sum((center[:new_seq_length, :] - center_GT[:new_seq_length, :]) ** 2, axis=1)
        if np.iscomplexobj(s):
            # MATLAB's sqrt of a value with zero imaginary part is that of the real value (a
            # negative one gives +i*...), whatever the sign of numpy's zero imaginary part.
            s = np.where(np.imag(s) == 0, np.real(s) + 0j, s)
        err_center = np.sqrt(s)

    # QUIRK: only frames whose four annotation values are all > 0 are scored (NaN > 0 is false);
    # a box at x = 0 or y = 0 counts as unannotated too.
    index = rect_anno > 0
    idx = np.sum(index, axis=1) == 4

    tmp = calc_rect_int(rect_mat[idx, :], rect_anno[idx, :])

    err_coverage = -np.ones(idx.size, dtype=tmp.dtype if np.iscomplexobj(tmp) else float)
    err_coverage[idx] = tmp
    # QUIRK: centre error -1 on those frames, which is <= every threshold, so eval_tracker counts
    # them as precision successes (while their overlap -1 fails every success threshold).
    err_center[~idx] = -1
    return err_coverage, err_center


# -----------------------------------------------------------------------------
# eval_tracker.m, for one tracker and one sequence


def sequence_curves(results, rect_anno, absent_anno, norm_dst):
    """(success_curve (21,), error_curve (51,)): this sequence's row of ave_success_rate_plot for
    'overlap' and for 'error' as eval_tracker saves them."""
    threshold_set_overlap = THRESHOLDS_OVERLAP
    threshold_set_error = THRESHOLDS_ERROR_NORM if norm_dst else THRESHOLDS_ERROR

    success_num_overlap = np.zeros(threshold_set_overlap.size)
    success_num_err = np.zeros(threshold_set_error.size)

    # QUIRK: an empty result file `break`s out of the tracker loop before anything is stored, so
    # this sequence's row stays all zeros (for this tracker and every tracker after it in the
    # list; and if no tracker stores this sequence, the array is too short and plotting fails).
    # overall() then drops the all-zero row.
    if np.size(results) == 0:
        return success_num_overlap, success_num_err

    err_coverage, err_center = calc_seq_err_robust(results, rect_anno, absent_anno, norm_dst)

    # Relational operators compare real parts in MATLAB (numpy would order complex lexicographically).
    for t_idx in range(threshold_set_overlap.size):
        success_num_overlap[t_idx] = np.sum(
            np.real(err_coverage) > threshold_set_overlap[t_idx]
        )  # `>`
    for t_idx in range(threshold_set_error.size):
        success_num_err[t_idx] = np.sum(np.real(err_center) <= threshold_set_error[t_idx])  # `<=`

    # QUIRK: divided by ALL annotation rows, absent frames included (they were removed above),
    # so absent frames count as failures; + eps as in the MATLAB.
    len_all = np.array(rect_anno, ndmin=2).shape[0]
    return success_num_overlap / (len_all + EPS), success_num_err / (len_all + EPS)


# -----------------------------------------------------------------------------
# plot_draw_save.m


def overall(curves):
    """(curve (T,), auc): the plotted curve over the S sequences of an (S, T) array of
    sequence_curves rows, and its 'AUC' ranking score, the mean of the curve. The 'threshold'
    ranking score is curve[RANK_IDX_OVERLAP - 1] or curve[RANK_IDX_ERROR - 1]."""
    aa = np.array(curves, dtype=float, ndmin=2)
    # QUIRK: sequences whose curve sums to <= eps (a tracker scoring 0 on them, or an empty
    # result file) are left out of the mean instead of counting as 0.
    aa = aa[np.sum(aa, axis=1) > EPS, :]
    if aa.shape[0] == 1:
        # QUIRK: MATLAB's mean of a single row is the mean of its elements, a scalar: the 'AUC'
        # score below is the same, but MATLAB would plot one point and bb(rank_idx) would fail.
        # We return the row as the curve.
        bb = aa[0, :]
    else:
        # mean over sequences; with no sequence left, MATLAB's mean of a 0 x T array is NaN(1, T).
        with np.errstate(invalid="ignore", divide="ignore"):
            bb = np.sum(aa, axis=0) / aa.shape[0]
    auc = float(np.mean(bb))  # 'AUC': perf(i) = mean(bb)
    return bb, auc
