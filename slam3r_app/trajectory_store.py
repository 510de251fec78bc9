"""The app-owned trajectory: one store of every frame's pose that corrections can move.

Layout (DROID-SLAM's trajectory filler, ORB-SLAM's keyframe-relative frames):

* every **keyframe** has a world *transform* ``M_k`` (``[4, 4]`` float64, camera to
  world; rigid until a Sim(3) correction gives it a scale);
* every other frame is stored **relative to its reference keyframe** (the newest
  keyframe when it was added): ``rel_f = inv(M_k) @ T_f``, so ``T_f = M_k @ rel_f``
  follows whatever happens to ``M_k`` later. Frames before the first keyframe are
  stored in the world (reference -1).

A correction (:class:`~slam3r_app.types.PoseUpdate`) sets new keyframe transforms
(and, for relocalisation, single frame poses); :meth:`TrajectoryStore.apply`
bumps :attr:`~TrajectoryStore.revision`. Readers get copies, never views, so
nothing outside can change the store by accident.

Memory: columnar arrays grown in chunks, about 320 bytes per frame (index,
timestamp, reference, 4x4 relative transform, intrinsics, ground truth, status),
plus 128 bytes per keyframe.

Threads: the frame loop is the only writer. Other threads (viewer, background
optimisers) read through :meth:`snapshot`, which copies under the store's lock.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .sim3 import sim3_inverse, sim3_scale, strip_scale
from .types import PoseUpdate, ScaleProvenance, TrackingStatus, TrajectoryPose, WorldScale


class StaleCorrection(ValueError):
    """A correction computed on an old revision would undo a newer one (see :meth:`TrajectoryStore.apply`)."""


_STATUS_CODES = {TrackingStatus.TRACKED: 0, TrackingStatus.LOST: 1, TrackingStatus.RELOCALIZED: 2}
_STATUS_NAMES = {v: k for k, v in _STATUS_CODES.items()}


def _status(value: "TrackingStatus | str") -> TrackingStatus:
    try:
        return TrackingStatus(value)
    except ValueError:
        raise ValueError(f"unknown tracking status {value!r} (one of: tracked, lost, relocalized)") from None


@dataclass(frozen=True)
class TrajectorySnapshot:
    """A consistent copy of the store at one revision (for threads other than the loop's).

    Attributes:
        revision: the store's revision when copied.
        indices: ``[N]`` int64 frame indices (ascending).
        timestamps: ``[N]`` float64 seconds.
        transforms: ``[N, 4, 4]`` float64 current world transforms (Sim(3); rigid unless
            a Sim(3) correction scaled them).
        is_keyframe: ``[N]`` bool.
        status: ``[N]`` int8 codes (0 tracked, 1 lost, 2 relocalized).
    """

    revision: int
    indices: np.ndarray
    timestamps: np.ndarray
    transforms: np.ndarray
    is_keyframe: np.ndarray
    status: np.ndarray

    @property
    def poses(self) -> np.ndarray:
        """``[N, 4, 4]`` rigid camera-to-world poses."""
        return strip_scale(self.transforms) if len(self.transforms) else self.transforms.copy()

    def keyframe_transforms(self) -> dict[int, np.ndarray]:
        """``{keyframe index: [4, 4] transform}``."""
        return {int(i): self.transforms[r].copy() for r, i in enumerate(self.indices) if self.is_keyframe[r]}


class TrajectoryStore:
    """Every frame's pose, keyframe-anchored, correctable (``context.trajectory``).

    Args:
        chunk: rows allocated at a time.
    """

    def __init__(self, chunk: int = 1024) -> None:
        self._chunk = int(chunk)
        self._lock = threading.RLock()
        self.clear()

    # ------------------------------------------------------------------ storage
    def clear(self) -> None:
        """Forget every frame (a map reset); the revision goes on counting."""
        with self._lock:
            cap = self._chunk
            self._n = 0
            self._index = np.zeros(cap, np.int64)
            self._stamp = np.zeros(cap, np.float64)
            self._ref = np.full(cap, -1, np.int32)  # row in the keyframe arrays, -1: stored in the world
            self._rel = np.zeros((cap, 4, 4), np.float64)
            self._K = np.full((cap, 4), np.nan, np.float64)  # fx fy cx cy
            self._gt = np.full((cap, 4, 4), np.nan, np.float64)
            self._status = np.zeros(cap, np.int8)
            self._is_kf = np.zeros(cap, bool)
            self._set_at = np.zeros(cap, np.int64)  # revision of the last correction that set the frame's pose
            self._kf_rows = np.zeros(64, np.int64)  # frame row of each keyframe
            self._kf_T = np.zeros((64, 4, 4), np.float64)
            self._kf_set_at = np.zeros(64, np.int64)  # revision of the last correction that moved the keyframe
            self._nk = 0
            self.revision = getattr(self, "revision", 0)
            self._scale = WorldScale()

    def _grow(self) -> None:
        cap = len(self._index) + self._chunk
        for name in ("_index", "_stamp", "_ref", "_rel", "_K", "_gt", "_status", "_is_kf", "_set_at"):
            old = getattr(self, name)
            fill = {"_ref": -1, "_K": np.nan, "_gt": np.nan}.get(name, 0)
            new = np.full((cap,) + old.shape[1:], fill, old.dtype)
            new[: self._n] = old[: self._n]
            setattr(self, name, new)

    def _grow_kf(self) -> None:
        cap = 2 * len(self._kf_rows)
        rows = np.zeros(cap, np.int64)
        rows[: self._nk] = self._kf_rows[: self._nk]
        T = np.zeros((cap, 4, 4), np.float64)
        T[: self._nk] = self._kf_T[: self._nk]
        at = np.zeros(cap, np.int64)
        at[: self._nk] = self._kf_set_at[: self._nk]
        self._kf_rows, self._kf_T, self._kf_set_at = rows, T, at

    def __len__(self) -> int:
        return self._n

    @property
    def num_keyframes(self) -> int:
        return self._nk

    # ------------------------------------------------------------------ writing (the frame loop)
    def add(self, index: int, timestamp: float, pose: np.ndarray, is_keyframe: bool,
            status: "TrackingStatus | str" = TrackingStatus.TRACKED, intrinsics: Optional[np.ndarray] = None,
            gt_pose: Optional[np.ndarray] = None) -> None:
        """Append one frame (indices must increase).

        Args:
            index: the frame's index in the stream.
            timestamp: seconds.
            pose: ``[4, 4]`` camera-to-world in the current world (a keyframe's becomes its transform).
            is_keyframe: anchor later frames to this one.
            status: the frame's :class:`TrackingStatus`.
            intrinsics: ``[3, 3]`` of the estimate (kept as fx, fy, cx, cy).
            gt_pose: ``[4, 4]`` ground truth, if the source has it.
        """
        T = np.asarray(pose, dtype=np.float64)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise ValueError(f"frame {index}: pose must be a finite 4x4 matrix, got shape {T.shape}")
        code = _STATUS_CODES[_status(status)]
        with self._lock:
            if self._n and int(index) <= int(self._index[self._n - 1]):
                raise ValueError(f"frame {index} added after frame {int(self._index[self._n - 1])}: "
                                 "frame indices must increase")
            if self._n == len(self._index):
                self._grow()
            r = self._n
            self._index[r] = int(index)
            self._stamp[r] = float(timestamp)
            self._status[r] = code
            self._is_kf[r] = bool(is_keyframe)
            self._set_at[r] = self.revision
            if intrinsics is not None:
                K = np.asarray(intrinsics, dtype=np.float64)
                self._K[r] = (K[0, 0], K[1, 1], K[0, 2], K[1, 2])
            if gt_pose is not None:
                self._gt[r] = np.asarray(gt_pose, dtype=np.float64)
            if is_keyframe:
                if self._nk == len(self._kf_rows):
                    self._grow_kf()
                self._kf_rows[self._nk] = r
                self._kf_T[self._nk] = T
                self._kf_set_at[self._nk] = self.revision
                self._ref[r] = self._nk
                self._rel[r] = np.eye(4)
                self._nk += 1
            elif self._nk:
                k = self._nk - 1
                self._ref[r] = k
                self._rel[r] = sim3_inverse(self._kf_T[k]) @ T
            else:
                self._ref[r] = -1
                self._rel[r] = T
            self._n += 1

    def set_status(self, index: int, status: "TrackingStatus | str") -> None:
        with self._lock:
            self._status[self._row(index)] = _STATUS_CODES[_status(status)]

    def apply(self, update: PoseUpdate) -> PoseUpdate:
        """Apply a correction; fills ``update.moved`` and ``update.revision`` and returns it.

        Keyframes in ``update.keyframes`` get their new transform; with ``propagate``,
        keyframes newer than the newest of them follow it rigidly (its delta
        ``new @ inv(old)`` is applied to them). Frames in ``update.frames`` get the given
        pose (relative to their reference keyframe from now on) and, if they were lost,
        the status ``relocalized``.

        Staleness: an update computed on an older revision (``update.based_on_revision``)
        is applied only if none of the keyframes / frames it sets was moved by a correction
        applied since (it would undo that correction); a proposer then recomputes from a new
        snapshot. ``based_on_revision = -1`` means "computed on the current revision".

        Raises:
            KeyError: an index in the update is not a keyframe / frame of the store.
            StaleCorrection: the update would undo a newer correction, or names a future revision.
            ValueError: a transform is not a finite ``[4, 4]`` with positive scale, or a
                ``se3`` update carries a scale.
        """
        with self._lock:
            self._check_revision(update)
            moved: dict[int, tuple[np.ndarray, np.ndarray]] = {}
            kf_pos = {}
            for idx, T in update.keyframes.items():
                k = self._kf_pos(int(idx))
                T = self._check_transform(idx, T, update.kind)
                kf_pos[k] = T
            revision = self.revision + 1
            if update.scale is not None:
                self._scale = self._check_scale(update.scale)
            for k, T in sorted(kf_pos.items()):
                old = self._kf_T[k].copy()
                self._kf_T[k] = T
                self._kf_set_at[k] = revision
                moved[int(self._index[self._kf_rows[k]])] = (old, T.copy())
            if update.propagate and kf_pos:
                last = max(kf_pos)
                old_last = moved[int(self._index[self._kf_rows[last]])][0]
                delta = kf_pos[last] @ sim3_inverse(old_last)
                for k in range(last + 1, self._nk):
                    old = self._kf_T[k].copy()
                    self._kf_T[k] = delta @ old
                    self._kf_set_at[k] = revision
                    moved[int(self._index[self._kf_rows[k]])] = (old, self._kf_T[k].copy())
            for idx, T in update.frames.items():
                r = self._row(int(idx))
                T = self._check_transform(idx, T, update.kind)
                k = int(self._ref[r])
                if self._is_kf[r]:
                    old = self._kf_T[k].copy()
                    self._kf_T[k] = T
                    self._kf_set_at[k] = revision
                    moved[int(idx)] = (old, T.copy())
                else:
                    self._rel[r] = T if k < 0 else sim3_inverse(self._kf_T[k]) @ T
                    self._set_at[r] = revision
                if self._status[r] == _STATUS_CODES[TrackingStatus.LOST]:
                    self._status[r] = _STATUS_CODES[TrackingStatus.RELOCALIZED]
            self.revision = revision
            update.revision = self.revision
            update.moved = moved
            return update

    def _check_revision(self, update: PoseUpdate) -> None:
        base = int(update.based_on_revision)
        if base > self.revision:
            raise StaleCorrection(f"the correction says it was computed on revision {base}, but the trajectory "
                                  f"is at revision {self.revision}")
        if base < 0 or base == self.revision:
            return
        newer = [int(i) for i in update.keyframes if self._kf_set_at[self._kf_pos(int(i))] > base]
        newer += [int(i) for i in update.frames if self._set_at[self._row(int(i))] > base
                  or (self._is_kf[self._row(int(i))] and self._kf_set_at[int(self._ref[self._row(int(i))])] > base)]
        if newer:
            shown = ", ".join(str(i) for i in sorted(newer)[:5]) + (" ..." if len(newer) > 5 else "")
            raise StaleCorrection(f"computed on revision {base}, it would undo a later correction of frames {shown} "
                                  f"(the trajectory is at revision {self.revision})")

    @staticmethod
    def _check_scale(scale: WorldScale) -> WorldScale:
        if not isinstance(scale, WorldScale):
            raise ValueError(f"the scale of a correction must be a WorldScale, got {type(scale).__name__}")
        v = float(scale.value)
        if not (np.isfinite(v) and v > 0):
            raise ValueError(f"the world's scale must be finite and > 0, got {scale.value!r}")
        return WorldScale(v, ScaleProvenance(scale.provenance), dict(scale.info))

    # ------------------------------------------------------------------ the world's scale
    def declare_metric_frontend(self) -> None:
        """The frontend predicts metres: the world is metric with scale 1 (a fact of the frontend, not a
        correction: no revision). Called by the core on the first estimate with ``depth_is_metric``."""
        with self._lock:
            if self._scale.provenance == ScaleProvenance.UNKNOWN:
                self._scale = WorldScale(1.0, ScaleProvenance.METRIC_FRONTEND)

    @property
    def world_scale(self) -> WorldScale:
        """The world's metric scale and its provenance (set only through a correction)."""
        return self._scale

    def metric_poses(self, keyframes_only: bool = False) -> np.ndarray:
        """``[N, 4, 4]`` rigid camera-to-world poses in metres where the scale is known (see :attr:`world_scale`)."""
        P = self.poses(keyframes_only)
        if len(P) and self._scale.value != 1.0:
            P[:, :3, 3] *= self._scale.value
        return P

    def metric_pose(self, index: int) -> np.ndarray:
        """``[4, 4]`` rigid camera-to-world pose of a frame, in metres where the scale is known."""
        P = self.pose(index)
        P[:3, 3] *= self._scale.value
        return P

    @staticmethod
    def _check_transform(idx: int, T: np.ndarray, kind: str) -> np.ndarray:
        T = np.asarray(T, dtype=np.float64)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise ValueError(f"correction for frame {idx}: a finite 4x4 matrix is needed, got shape {T.shape}")
        s = sim3_scale(T)
        if not s > 0:
            raise ValueError(f"correction for frame {idx}: the transform's scale is {s:.3g} (must be > 0)")
        if kind == "se3" and abs(s - 1.0) > 1e-6:
            raise ValueError(f"correction for frame {idx}: an se3 update carries a scale of {s:.6g}")
        return T

    # ------------------------------------------------------------------ lookups
    def _row(self, index: int) -> int:
        r = int(np.searchsorted(self._index[: self._n], int(index)))
        if r >= self._n or self._index[r] != int(index):
            raise KeyError(f"frame {index} is not in the trajectory")
        return r

    def _kf_pos(self, index: int) -> int:
        r = self._row(index)
        if not self._is_kf[r]:
            raise KeyError(f"frame {index} is not a keyframe")
        return int(self._ref[r])

    def __contains__(self, index: object) -> bool:
        try:
            self._row(int(index))  # type: ignore[arg-type]
            return True
        except (KeyError, TypeError, ValueError):
            return False

    def _transform_rows(self, rows: np.ndarray) -> np.ndarray:
        ref = self._ref[rows]
        out = self._rel[rows].copy()
        has = ref >= 0
        if has.any():
            out[has] = self._kf_T[ref[has]] @ self._rel[rows[has]]
        return out

    def transform(self, index: int) -> np.ndarray:
        """``[4, 4]`` current world transform of a frame (Sim(3): may carry a scale)."""
        with self._lock:
            return self._transform_rows(np.array([self._row(index)]))[0]

    def pose(self, index: int) -> np.ndarray:
        """``[4, 4]`` current rigid camera-to-world pose of a frame."""
        return strip_scale(self.transform(index))

    def scale(self, index: int) -> float:
        """The scale of a frame's transform (1 unless a Sim(3) correction rescaled it)."""
        return sim3_scale(self.transform(index))

    def status(self, index: int) -> TrackingStatus:
        with self._lock:
            return _STATUS_NAMES[int(self._status[self._row(index)])]

    def is_keyframe(self, index: int) -> bool:
        with self._lock:
            return bool(self._is_kf[self._row(index)])

    def reference_keyframe(self, index: int) -> Optional[int]:
        """The keyframe a frame is anchored to (itself for a keyframe), None before the first."""
        with self._lock:
            k = int(self._ref[self._row(index)])
            return None if k < 0 else int(self._index[self._kf_rows[k]])

    def last_index(self) -> Optional[int]:
        return int(self._index[self._n - 1]) if self._n else None

    def last_keyframe(self) -> Optional[int]:
        return int(self._index[self._kf_rows[self._nk - 1]]) if self._nk else None

    # ------------------------------------------------------------------ bulk reads
    def indices(self) -> np.ndarray:
        with self._lock:
            return self._index[: self._n].copy()

    def timestamps(self) -> np.ndarray:
        with self._lock:
            return self._stamp[: self._n].copy()

    def transforms(self) -> np.ndarray:
        """``[N, 4, 4]`` current world transforms, frame order."""
        with self._lock:
            return self._transform_rows(np.arange(self._n))

    def poses(self, keyframes_only: bool = False) -> np.ndarray:
        """``[N, 4, 4]`` current rigid camera-to-world poses, frame order."""
        T = self.transforms()
        if keyframes_only:
            with self._lock:
                T = T[self._is_kf[: self._n]]
        return strip_scale(T) if len(T) else np.zeros((0, 4, 4))

    def keyframe_flags(self) -> np.ndarray:
        with self._lock:
            return self._is_kf[: self._n].copy()

    def statuses(self) -> list[TrackingStatus]:
        with self._lock:
            return [_STATUS_NAMES[int(c)] for c in self._status[: self._n]]

    def keyframe_indices(self) -> list[int]:
        with self._lock:
            return [int(i) for i in self._index[self._kf_rows[: self._nk]]]

    def keyframe_transforms(self) -> dict[int, np.ndarray]:
        """``{keyframe index: [4, 4] transform}`` (copies)."""
        with self._lock:
            return {int(self._index[self._kf_rows[k]]): self._kf_T[k].copy() for k in range(self._nk)}

    def frames_of(self, keyframe: int) -> list[int]:
        """The frames anchored to ``keyframe`` (itself included)."""
        with self._lock:
            k = self._kf_pos(keyframe)
            return [int(i) for i in self._index[: self._n][self._ref[: self._n] == k]]

    def rows(self, metric: bool = False) -> list[TrajectoryPose]:
        """Every frame as a :class:`TrajectoryPose` copy (index, timestamp, pose, keyframe flag, status);
        ``metric``: poses in the world's metric scale where it is known (:meth:`metric_poses`)."""
        with self._lock:
            P = self.metric_poses() if metric else self.poses()
            return [TrajectoryPose(int(self._index[r]), float(self._stamp[r]), P[r], bool(self._is_kf[r]),
                                   _STATUS_NAMES[int(self._status[r])].value) for r in range(self._n)]

    def intrinsics(self, index: int) -> Optional[np.ndarray]:
        with self._lock:
            fx, fy, cx, cy = self._K[self._row(index)]
        if not np.isfinite(fx):
            return None
        return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float64)

    def intrinsics_dict(self) -> dict[int, np.ndarray]:
        with self._lock:
            n = self._n
            ok = np.isfinite(self._K[:n, 0])
            out = {}
            for r in np.nonzero(ok)[0]:
                fx, fy, cx, cy = self._K[r]
                out[int(self._index[r])] = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float64)
            return out

    def gt_poses(self) -> dict[int, np.ndarray]:
        with self._lock:
            n = self._n
            ok = np.isfinite(self._gt[:n, 0, 0])
            return {int(self._index[r]): self._gt[r].copy() for r in np.nonzero(ok)[0]}

    def snapshot(self) -> TrajectorySnapshot:
        with self._lock:
            n = self._n
            return TrajectorySnapshot(self.revision, self._index[:n].copy(), self._stamp[:n].copy(),
                                      self._transform_rows(np.arange(n)), self._is_kf[:n].copy(),
                                      self._status[:n].copy())

    def nbytes(self) -> int:
        """Bytes held by the arrays (allocated capacity)."""
        arrays = (self._index, self._stamp, self._ref, self._rel, self._K, self._gt, self._status, self._is_kf,
                  self._set_at, self._kf_rows, self._kf_T, self._kf_set_at)
        return int(sum(a.nbytes for a in arrays))
