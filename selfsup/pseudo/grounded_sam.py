"""Open-vocabulary semantics: Grounding DINO boxes + SAM masks, fused to Occ3D classes.

GaussianFlowOcc (boschresearch/GaussianFlowOcc, ``groundedsam/generate_grounded_sam.py``)
prompts Grounding DINO (SwinB, ``groundingdino_swinb_cogcoor``; box and text thresholds
0.20) with 42 phrases in 17 groups (:data:`VOCABULARY`), prompts SAM ViT-H with each box,
and labels each pixel by ``argmax`` over [0, mask_1 * score_1, ..., mask_N * score_N]:
the box of highest score whose mask covers the pixel wins; no box -> 0; its default
"separate" mode runs the detector once per phrase (42 passes per image).

Here the detector runs ONCE per image batch with all phrases in one caption,
``" . ".join(phrases) + " ."`` (Grounding DINO's own caption form; 42 phrases = 88
bert-base-uncased tokens of its 256), and each box gets the phrase whose tokens hold its
highest token probability, found through the tokenizer's character offsets
(``return_offsets_mapping=True``): transformers' ``text_labels`` join every token above
the text threshold and can merge neighbouring phrases. SAM computes each image's
embedding once and decodes all of its boxes in one call (images of a batch padded to the
same box count). The fusion rule is GaussianFlowOcc's. Group -> Occ3D class as its
``nusc_v2_to_v1`` table; 'sky' (its class 0, which its loader and ours treat as
unlabelled) takes part in the fusion and leaves its pixels unlabelled.

Phrases are written with spaces ("traffic cone"), as in GaussianFlowOcc's default
separate mode (its combined mode keeps the hyphens).
"""

from __future__ import annotations

import numpy as np
import torch

from selfsup.pseudo.hf import checkpoint_config, checkpoint_hash, import_transformers, load_pretrained
from selfsup.pseudo.sources import PseudoSample

# GaussianFlowOcc's prompt groups and phrases, in its order.
VOCABULARY: dict[str, tuple[str, ...]] = {
    "background": ("sky",),
    "car": ("car", "vehicle", "sedan", "van", "jeep"),
    "truck": ("lorry", "truck", "tractor"),
    "trailer": ("trailer",),
    "bus": ("bus",),
    "construction_vehicle": ("excavator", "crane"),
    "bicycle": ("bicycle",),
    "motorcycle": ("motorcycle", "scooter"),
    "pedestrian": ("person", "pedestrian"),
    "traffic_cone": ("traffic cone",),
    "barrier": ("barricade", "barrier"),
    "driveable_surface": ("highway", "street"),
    "other_flat": ("traffic island", "delimiter"),
    "sidewalk": ("sidewalk", "walkway"),
    "terrain": ("grass", "sand", "gravel", "terrain"),
    "manmade": ("building", "wall", "fence", "pole", "sign", "light", "bridge", "billboard"),
    "vegetation": ("bush", "plants", "tree"),
}
# Occ3D class ids (0 others, 1 barrier, ..., 16 vegetation); None = unlabelled.
GROUP_TO_OCC3D: dict[str, int | None] = {
    "background": None, "car": 4, "truck": 10, "trailer": 9, "bus": 3, "construction_vehicle": 5, "bicycle": 2,
    "motorcycle": 6, "pedestrian": 7, "traffic_cone": 8, "barrier": 1, "driveable_surface": 11, "other_flat": 12,
    "sidewalk": 13, "terrain": 14, "manmade": 15, "vegetation": 16,
}
BOX_THRESHOLD = 0.20  # GaussianFlowOcc
TEXT_THRESHOLD = 0.20


def phrases_and_classes(vocabulary: dict[str, tuple[str, ...]] = VOCABULARY) -> tuple[list[str], list[int]]:
    """Flattened phrases and the Occ3D class of each (-1 = unlabelled)."""
    phrases, classes = [], []
    for group, words in vocabulary.items():
        occ = GROUP_TO_OCC3D[group]
        for w in words:
            phrases.append(w)
            classes.append(-1 if occ is None else occ)
    return phrases, classes


def build_caption(phrases: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """``" . ".join(phrases) + " ."`` and each phrase's character span [start, end)."""
    spans, pos = [], 0
    for i, p in enumerate(phrases):
        if i:
            pos += 3  # " . "
        spans.append((pos, pos + len(p)))
        pos += len(p)
    return " . ".join(phrases) + " .", spans


def phrase_token_mask(offsets: list[tuple[int, int]], spans: list[tuple[int, int]], max_len: int = 256) -> torch.Tensor:
    """Bool ``[num_phrases, max_len]``: which caption tokens belong to each phrase.

    Args:
        offsets: the tokenizer's ``offset_mapping`` of the caption (special tokens (0, 0)).
        spans: character spans from :func:`build_caption`.

    Raises:
        ValueError: a phrase has no token (e.g. the caption was truncated).
    """
    mask = torch.zeros(len(spans), max_len, dtype=torch.bool)
    for t, (a, b) in enumerate(offsets[:max_len]):
        if b <= a:
            continue
        for k, (s, e) in enumerate(spans):
            if a >= s and b <= e:
                mask[k, t] = True
    empty = [k for k in range(len(spans)) if not mask[k].any()]
    if empty:
        raise ValueError(f"phrases {empty} have no token in the first {max_len} caption tokens")
    return mask


def assign_phrases(
    logits: torch.Tensor, token_mask: torch.Tensor, box_threshold: float = BOX_THRESHOLD,
    text_threshold: float = TEXT_THRESHOLD,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Score each query box and give it one phrase.

    Args:
        logits: Grounding DINO token logits ``[Q, L]`` of one image (-inf at padding).
        token_mask: ``[num_phrases, L]`` from :func:`phrase_token_mask`.

    Returns:
        ``keep`` indices of the kept queries, their ``scores`` (max token probability, as
        Grounding DINO's box score) and ``phrase`` index per kept query (the phrase holding
        the query's highest token probability among phrase tokens). A query is kept when
        its score > ``box_threshold`` and its phrase's token probability > ``text_threshold``.
    """
    L = min(logits.shape[-1], token_mask.shape[-1])
    prob = logits[:, :L].float().sigmoid()
    tm = token_mask[:, :L].to(prob.device)
    score = prob.max(dim=-1).values
    per_phrase = torch.where(tm[None], prob[:, None, :], torch.zeros((), device=prob.device)).amax(dim=-1)  # [Q, P]
    phrase_prob, phrase = per_phrase.max(dim=-1)
    keep = torch.nonzero((score > box_threshold) & (phrase_prob > text_threshold)).flatten()
    return keep, score[keep], phrase[keep]


def fuse_masks(masks: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """GaussianFlowOcc's fusion: per pixel the class of the highest-scoring box whose mask
    covers it; -1 where no mask does (or the winner is unlabelled, e.g. sky).

    Args:
        masks: bool ``[N, H, W]``; scores ``[N]``; classes ``[N]`` (int, -1 = unlabelled).

    Returns:
        int64 ``[H, W]``.
    """
    if masks.shape[0] == 0:
        return torch.full(masks.shape[1:], -1, dtype=torch.long)
    weighted = masks.float() * scores.float()[:, None, None]
    weighted = torch.cat([torch.zeros_like(weighted[:1]), weighted])
    idx = weighted.argmax(dim=0)
    lut = torch.cat([torch.tensor([-1]), classes.long().cpu()])
    return lut[idx.cpu()]


class GroundedSamBackend:
    """Grounding DINO + SAM from two local checkpoint folders (see module doc).

    Args:
        checkpoint: Grounding DINO folder (model, processor with its BERT tokenizer).
        sam_checkpoint: SAM folder (model + processor).
        batch_size: images per forward pass of each model.
        max_boxes: keep at most this many boxes per image (highest scores).

    Raises:
        FileNotFoundError: missing folders; ValueError: wrong architectures or unloadable.
    """

    kind = "semantic"
    name = "grounded_sam"
    needs_images = True

    def __init__(self, checkpoint: str, sam_checkpoint: str, batch_size: int = 6, device="cpu",
                 box_threshold: float = BOX_THRESHOLD, text_threshold: float = TEXT_THRESHOLD, max_boxes: int = 100):
        checkpoint_config(checkpoint, "Grounding DINO", ("grounding-dino",))
        if sam_checkpoint is None:
            raise ValueError("the grounded_sam backend needs --sam-checkpoint DIR (a SAM checkpoint folder)")
        checkpoint_config(sam_checkpoint, "SAM", ("sam",))
        tf = import_transformers()
        self.dino_processor = load_pretrained(tf.AutoProcessor, checkpoint, "Grounding DINO processor")
        self.dino = load_pretrained(tf.GroundingDinoForObjectDetection, checkpoint, "Grounding DINO").eval().to(device)
        self.sam_processor = load_pretrained(tf.SamProcessor, sam_checkpoint, "SAM processor")
        self.sam = load_pretrained(tf.SamModel, sam_checkpoint, "SAM").eval().to(device)
        self.checkpoint, self.sam_checkpoint = str(checkpoint), str(sam_checkpoint)
        self.batch_size, self.device, self.max_boxes = int(batch_size), torch.device(device), int(max_boxes)
        self.box_threshold, self.text_threshold = float(box_threshold), float(text_threshold)
        self.phrases, classes = phrases_and_classes()
        self.phrase_classes = torch.tensor(classes)
        self.caption, spans = build_caption(self.phrases)
        enc = self.dino_processor.tokenizer(self.caption, return_offsets_mapping=True)
        self.num_tokens = len(enc["input_ids"])
        max_len = self.dino.config.max_text_len
        if self.num_tokens > max_len:
            raise ValueError(f"the caption has {self.num_tokens} tokens, more than Grounding DINO's {max_len}")
        self.token_mask = phrase_token_mask([tuple(o) for o in enc["offset_mapping"]], spans, max_len)

    def manifest(self) -> dict:
        return dict(backend=self.name, checkpoint=self.checkpoint, checkpoint_sha256=checkpoint_hash(self.checkpoint),
                    backend_config=dict(sam_checkpoint=self.sam_checkpoint,
                                        sam_checkpoint_sha256=checkpoint_hash(self.sam_checkpoint),
                                        caption=self.caption, caption_tokens=self.num_tokens,
                                        phrase_classes=dict(zip(self.phrases, self.phrase_classes.tolist())),
                                        box_threshold=self.box_threshold, text_threshold=self.text_threshold,
                                        max_boxes=self.max_boxes))

    @torch.no_grad()
    def detect(self, images: list[np.ndarray]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Boxes (xyxy, pixels of each image), scores and Occ3D classes per image."""
        out = []
        for s in range(0, len(images), self.batch_size):
            chunk = images[s:s + self.batch_size]
            inputs = self.dino_processor(images=chunk, text=[self.caption] * len(chunk), return_tensors="pt").to(self.device)
            pred = self.dino(**inputs)
            for b, img in enumerate(chunk):
                keep, score, phrase = assign_phrases(pred.logits[b], self.token_mask, self.box_threshold, self.text_threshold)
                if len(keep) > self.max_boxes:
                    top = score.topk(self.max_boxes).indices
                    keep, score, phrase = keep[top], score[top], phrase[top]
                H, W = img.shape[:2]
                cx, cy, w, h = pred.pred_boxes[b, keep].float().cpu().unbind(-1)
                boxes = torch.stack([(cx - w / 2) * W, (cy - h / 2) * H, (cx + w / 2) * W, (cy + h / 2) * H], -1)
                out.append((boxes, score.cpu(), self.phrase_classes[phrase.cpu()]))
        return out

    @torch.no_grad()
    def segment(self, images: list[np.ndarray], detections, out_hw: tuple[int, int]) -> np.ndarray:
        """Fused class maps ``[N, h, w]`` (-1 = unlabelled) from SAM masks of the boxes."""
        labels = []
        for s in range(0, len(images), self.batch_size):
            chunk, dets = images[s:s + self.batch_size], detections[s:s + self.batch_size]
            n_max = max(1, max(len(d[0]) for d in dets))
            boxes = []
            for d in dets:
                b = d[0].tolist()
                b += [[0.0, 0.0, 1.0, 1.0]] * (n_max - len(b))  # padding, ignored below
                boxes.append(b)
            inputs = self.sam_processor(images=chunk, input_boxes=boxes, return_tensors="pt")
            pixel_values = inputs["pixel_values"].to(self.device)
            embeddings = self.sam.get_image_embeddings(pixel_values)  # once per image
            pred = self.sam(image_embeddings=embeddings, input_boxes=inputs["input_boxes"].to(self.device),
                            multimask_output=False)
            sizes = torch.tensor([list(out_hw)] * len(chunk))
            masks = self.sam_processor.post_process_masks(pred.pred_masks.cpu(), sizes, inputs["reshaped_input_sizes"].cpu(),
                                                          binarize=True)
            for m, (bx, sc, cl) in zip(masks, dets):
                n = len(bx)
                labels.append(fuse_masks(m[:n, 0].bool(), sc, cl).numpy())
        return np.stack(labels)

    def predict(self, sample: PseudoSample, out_hw: tuple[int, int]) -> tuple[np.ndarray, dict]:
        if sample.images is None:
            raise ValueError(f"sample {sample.token}: the grounded_sam backend needs images")
        images = list(sample.images)
        dets = self.detect(images)
        labels = self.segment(images, dets, out_hw)
        return labels, dict(boxes=[len(d[0]) for d in dets], labelled_fraction=float((labels >= 0).mean()))
