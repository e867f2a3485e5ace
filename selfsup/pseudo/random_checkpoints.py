"""Randomly initialised transformers checkpoints of the backends' architectures, built from
configs and written with ``save_pretrained`` (nothing is downloaded): tiny ones for the tests
and the CPU demo of the pipeline, full-size ones for speed benchmarks. Their outputs mean
nothing; they exercise the real loading, pre-/post-processing, batching and writing code."""

from __future__ import annotations

from pathlib import Path

from selfsup.pseudo.grounded_sam import phrases_and_classes
from selfsup.pseudo.hf import import_transformers


def bert_vocab(words: list[str]) -> dict[str, int]:
    """A WordPiece vocabulary with [CLS] [SEP] . ? at bert-base-uncased's ids 101 / 102 /
    1012 / 1029 (Grounding DINO splits captions on exactly these ids) and ``words`` after."""
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    while len(vocab) < 1012:
        vocab.append(f"[unused{len(vocab)}]")
    vocab.append(".")
    while len(vocab) < 1029:
        vocab.append(f"[unused{len(vocab)}]")
    vocab.append("?")
    for w in words:
        if w not in vocab:
            vocab.append(w)
    return {w: i for i, w in enumerate(vocab)}


def make_depth_anything(folder: Path, metric: bool = True) -> Path:
    tf = import_transformers()
    backbone = tf.Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                               image_size=56, patch_size=14, out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
    cfg = tf.DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32],
                                 fusion_hidden_size=16, head_hidden_size=8,
                                 depth_estimation_type="metric" if metric else "relative", max_depth=80)
    tf.AutoModelForDepthEstimation.from_config(cfg).save_pretrained(folder)
    tf.DPTImageProcessor(size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
                         resample=3).save_pretrained(folder)
    return folder


def make_grounding_dino(folder: Path) -> Path:
    tf = import_transformers()
    phrases, _ = phrases_and_classes()
    words = sorted({w for p in phrases for w in p.split()})
    vocab = bert_vocab(words)
    tok = tf.BertTokenizerFast(vocab=vocab, do_lower_case=True)
    backbone = tf.SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=7,
                             out_features=["stage2", "stage3", "stage4"], image_size=224)
    text = tf.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)
    cfg = tf.GroundingDinoConfig(backbone_config=backbone, text_config=text, d_model=32, encoder_layers=1, decoder_layers=2,
                                 encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=2,
                                 decoder_attention_heads=2, num_queries=30)
    tf.GroundingDinoForObjectDetection(cfg).save_pretrained(folder)
    ip = tf.GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 112})
    tf.GroundingDinoProcessor(image_processor=ip, tokenizer=tok).save_pretrained(folder)
    return folder


def make_sam(folder: Path) -> Path:
    tf = import_transformers()
    vc = tf.SamVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64, output_channels=32,
                            image_size=128, patch_size=16, window_size=4, global_attn_indexes=[1], num_pos_feats=16)
    pc = tf.SamPromptEncoderConfig(hidden_size=32, image_size=128, patch_size=16, mask_input_channels=4)
    mc = tf.SamMaskDecoderConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64,
                                 iou_head_hidden_dim=32)
    tf.SamModel(tf.SamConfig(vision_config=vc, prompt_encoder_config=pc, mask_decoder_config=mc)).save_pretrained(folder)
    ip = tf.SamImageProcessor(size={"longest_edge": 128}, pad_size={"height": 128, "width": 128})
    tf.SamProcessor(image_processor=ip).save_pretrained(folder)
    return folder


CITYSCAPES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
              "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")


def make_mask2former(folder: Path) -> Path:
    tf = import_transformers()
    backbone = tf.SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=7,
                             out_features=["stage1", "stage2", "stage3", "stage4"], image_size=224)
    id2label = dict(enumerate(CITYSCAPES))
    cfg = tf.Mask2FormerConfig(backbone_config=backbone, hidden_dim=32, mask_feature_size=32, feature_size=32,
                               encoder_layers=1, decoder_layers=2, num_attention_heads=2, dim_feedforward=64,
                               encoder_feedforward_dim=64, num_queries=10, id2label=id2label,
                               label2id={v: k for k, v in id2label.items()})
    tf.Mask2FormerForUniversalSegmentation(cfg).save_pretrained(folder)
    tf.Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 128}).save_pretrained(folder)
    return folder


# -- full-size architectures (random weights; for speed measurements only) ---------------------

def make_depth_anything_v2_small(folder: Path) -> Path:
    """Depth Anything V2 Small, metric (the Metric-Outdoor-Small-hf architecture, 24.8M)."""
    tf = import_transformers()
    backbone = tf.Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                               image_size=518, patch_size=14, out_indices=[3, 6, 9, 12], reshape_hidden_states=False)
    cfg = tf.DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=384, neck_hidden_sizes=[48, 96, 192, 384],
                                 fusion_hidden_size=64, head_hidden_size=32, depth_estimation_type="metric", max_depth=80)
    tf.AutoModelForDepthEstimation.from_config(cfg).save_pretrained(folder)
    tf.DPTImageProcessor(size={"height": 518, "width": 518}, keep_aspect_ratio=True, ensure_multiple_of=14, resample=3,
                         image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return folder


def make_grounding_dino_tiny(folder: Path) -> Path:
    """Grounding DINO with transformers' default config (Swin-T + BERT-base text encoder, as
    grounding-dino-tiny), a vocabulary of bert-base-uncased's size with the special ids in place."""
    tf = import_transformers()
    phrases, _ = phrases_and_classes()
    vocab = bert_vocab(sorted({w for p in phrases for w in p.split()}))
    while len(vocab) < 30522:
        vocab[f"[filler{len(vocab)}]"] = len(vocab)
    tok = tf.BertTokenizerFast(vocab=vocab, do_lower_case=True)
    tf.GroundingDinoForObjectDetection(tf.GroundingDinoConfig()).save_pretrained(folder)
    tf.GroundingDinoProcessor(image_processor=tf.GroundingDinoImageProcessor(), tokenizer=tok).save_pretrained(folder)
    return folder


def make_sam_vit_b(folder: Path) -> Path:
    """SAM with transformers' default config (ViT-B image encoder, 1024 x 1024 input)."""
    tf = import_transformers()
    tf.SamModel(tf.SamConfig()).save_pretrained(folder)
    tf.SamProcessor(image_processor=tf.SamImageProcessor()).save_pretrained(folder)
    return folder


def make_mask2former_swin_t(folder: Path) -> Path:
    """Mask2Former with a Swin-T backbone and the 19 Cityscapes classes (as
    mask2former-swin-tiny-cityscapes-semantic), processor at its 1024-pixel short side."""
    tf = import_transformers()
    backbone = tf.SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                             out_features=["stage1", "stage2", "stage3", "stage4"])
    id2label = dict(enumerate(CITYSCAPES))
    cfg = tf.Mask2FormerConfig(backbone_config=backbone, id2label=id2label, label2id={v: k for k, v in id2label.items()})
    tf.Mask2FormerForUniversalSegmentation(cfg).save_pretrained(folder)
    tf.Mask2FormerImageProcessor(size={"shortest_edge": 1024, "longest_edge": 2048}).save_pretrained(folder)
    return folder


TINY = dict(depth_anything=make_depth_anything, grounding_dino=make_grounding_dino, sam=make_sam,
            mask2former=make_mask2former)  # + make_oneformer (defined below)
FULL_SIZE = dict(depth_anything=make_depth_anything_v2_small, grounding_dino=make_grounding_dino_tiny, sam=make_sam_vit_b,
                 mask2former=make_mask2former_swin_t)



def clip_vocab() -> dict[str, int]:
    """A character-level CLIP BPE vocabulary (every byte-level character, with and without the
    end-of-word mark) and its special tokens: enough to tokenize any text, no merges."""
    # byte-level BPE alphabet: printable bytes as themselves, the other bytes shifted past 255
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    shifted = [256 + k for k in range(256 - len(printable))]
    chars = sorted(chr(c) for c in printable + shifted)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    return vocab


def make_oneformer(folder: Path) -> Path:
    """Tiny OneFormer (Swin backbone, CLIP-style task tokenizer) with the Cityscapes classes and
    its class-info file ``class_info.json`` beside the weights."""
    import json

    tf = import_transformers()
    backbone = tf.SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=7,
                             out_features=["stage1", "stage2", "stage3", "stage4"], image_size=224)
    id2label = dict(enumerate(CITYSCAPES))
    vocab = clip_vocab()
    cfg = tf.OneFormerConfig(backbone_config=backbone, num_queries=10, text_encoder_width=32, text_encoder_num_layers=1,
                             text_encoder_vocab_size=len(vocab), text_encoder_n_ctx=4, conv_dim=32, mask_dim=32,
                             hidden_dim=32, encoder_feedforward_dim=64, encoder_layers=1, decoder_layers=2,
                             num_attention_heads=2, dim_feedforward=64, query_dec_layers=1, id2label=id2label,
                             label2id={v: k for k, v in id2label.items()})
    tf.OneFormerForUniversalSegmentation(cfg).save_pretrained(folder)
    info = {str(i): {"name": n, "isthing": int(n in ("person", "rider", "car", "truck", "bus", "train", "motorcycle",
                                                      "bicycle"))} for i, n in id2label.items()}
    (Path(folder) / "class_info.json").write_text(json.dumps(info))
    ip = tf.OneFormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 128}, repo_path=str(folder),
                                    class_info_file="class_info.json", num_text=cfg.num_queries - cfg.text_encoder_n_ctx)
    tok = tf.CLIPTokenizer(vocab=vocab, merges=[])
    tf.OneFormerProcessor(image_processor=ip, tokenizer=tok).save_pretrained(folder)
    return folder


TINY["oneformer"] = make_oneformer


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="Write a RANDOM-weight checkpoint of a backend architecture "
                                            "(for tests, benchmarks and pipeline demos; its outputs mean nothing).")
    p.add_argument("model", choices=sorted(TINY))
    p.add_argument("folder", type=Path)
    p.add_argument("--full-size", action="store_true", help="the real checkpoint's size instead of a tiny one")
    a = p.parse_args()
    if a.full_size and a.model not in FULL_SIZE:
        p.error(f"no full-size builder for {a.model} (have {sorted(FULL_SIZE)})")
    print((FULL_SIZE if a.full_size else TINY)[a.model](a.folder))
