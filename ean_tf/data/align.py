"""Face detection (MTCNN) and 5-point alignment to a fixed template.

The template is the common 112x112 five-landmark one (eyes, nose tip, mouth
corners), scaled to the output size. A similarity transform (rotation, uniform
scale, translation; Umeyama's least squares) maps the detected landmarks onto it.
The `mtcnn` package ships its weights, so nothing is downloaded.
"""

from __future__ import annotations

import numpy as np

TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    np.float64,
)
KEYPOINTS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


def template(size: int) -> np.ndarray:
    """(5, 2) landmark positions for a `size` x `size` aligned face."""
    return TEMPLATE_112 * (size / 112.0)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(2, 3) matrix M minimising |M [src; 1] - dst|² over similarities (Umeyama).

    src, dst: (K, 2) point sets, K >= 2.
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sigma, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1
    rotation = u @ np.diag(sign) @ vt
    var = (s**2).sum() / len(src)
    scale = (sigma * sign).sum() / var if var > 0 else 1.0
    translation = mu_d - scale * rotation @ mu_s
    return np.hstack([scale * rotation, translation[:, None]])


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int) -> np.ndarray:
    """Warps `image` (H, W, 3) so `landmarks` (5, 2) land on the template."""
    import cv2

    matrix = similarity_transform(landmarks, template(size))
    return cv2.warpAffine(
        image,
        matrix,
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT,
    )


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The largest centred square, resized: the fallback when no face is found."""
    import cv2

    h, w = image.shape[:2]
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    return cv2.resize(
        image[y0 : y0 + side, x0 : x0 + side],
        (size, size),
        interpolation=cv2.INTER_AREA,
    )


class FaceAligner:
    """Detects faces with MTCNN and aligns them.

    `faces(image)` returns every face, largest first, as dicts with `box`
    (x, y, w, h), `confidence`, `landmarks` (5, 2) and `aligned` (size, size, 3).
    Images smaller than the detector's minimum face are upscaled first, so small
    already-cropped faces (48 px FER images) can still be found.
    """

    def __init__(self, size: int, min_face_size: int = 20, min_confidence: float = 0.9):
        from mtcnn import MTCNN

        self.size = size
        self.min_face_size = min_face_size
        self.min_confidence = min_confidence
        self.detector = MTCNN()

    def faces(self, image: np.ndarray) -> list[dict]:
        """image: (H, W, 3) uint8 RGB."""
        import cv2

        h, w = image.shape[:2]
        factor = 1.0
        if min(h, w) < 4 * self.min_face_size:
            factor = 4 * self.min_face_size / min(h, w)
            image_in = cv2.resize(
                image,
                (round(w * factor), round(h * factor)),
                interpolation=cv2.INTER_CUBIC,
            )
        else:
            image_in = image
        found = self.detector.detect_faces(image_in, min_face_size=self.min_face_size)
        results = []
        for face in found:
            if face["confidence"] < self.min_confidence:
                continue
            landmarks = (
                np.array([face["keypoints"][k] for k in KEYPOINTS], np.float64) / factor
            )
            box = [int(round(v / factor)) for v in face["box"]]
            results.append(
                {
                    "box": box,
                    "confidence": float(face["confidence"]),
                    "landmarks": landmarks,
                    "aligned": align_face(image, landmarks, self.size),
                }
            )
        results.sort(key=lambda f: -f["box"][2] * f["box"][3])
        return results
