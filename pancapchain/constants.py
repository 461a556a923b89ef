"""Names shared by every part of the package (one place, so they cannot drift)."""

IGNORE_INDEX = -100
IMAGE_TOKEN = "<image>"
BOX_OPEN = "<box>"
BOX_CLOSE = "</box>"

# The four PancapChain stages, in chain order.
STAGES = ("localize", "label", "discover", "caption")
# Stages whose prompt gives the boxes their answer writes (given-box decoding, pancapchain.infer.given_boxes)
GIVEN_BOX_STAGES = ("label", "caption")
# chain stages whose answer the ground truth can stand in for (pancapchain infer --oracle-through)
ORACLE_STAGES = ("localize", "label", "discover")

# Box-prompted tasks trained by the same model next to the chain (see pancapchain.data.box_tasks):
# SGDiff SegCaptioning (box -> sentences about the boxed entity and its related entities, boxes inline)
# and SCA region captioning (box -> a short phrase).
BOX_TASKS = ("segcap", "region")

# Direct panoptic captioning, the paper's baseline: one prompt, image -> grounded caption (no chain).
DIRECT = "direct"

EXTRA_TASKS = BOX_TASKS + (DIRECT,)

# Every prompt-defined task a recipe can train (data.stages keys); stage_ids of a batch index this tuple.
TASKS = STAGES + EXTRA_TASKS

# Box formats a recipe may choose (see pancapchain.data.boxes).
BOX_FORMATS = ("asmv2", "normalized", "bins")

# Integer grid of the ASMv2/PancapChain model box format: coordinates in [0, BOX_GRID].
BOX_GRID = 1000

# The ``bins`` box format (tiny recipes): one token <loc_i> per coordinate, i in [0, LOC_BINS] on the padded
# square, so a box is 6 tokens instead of ~20 digit and punctuation tokens.
LOC_BINS = 32
LOC_TOKENS = tuple(f"<loc_{i}>" for i in range(LOC_BINS + 1))

DISCOVER_NONE = "None"

# How a stage-2 item (data.label_answer) or a caption mention (data.caption_mentions) is written: the tag or phrase
# before its box, "tag <box>..</box>" (the paper's), or after it (pancapchain.data.caption_layout for captions).
ANSWER_LAYOUTS = ("tag_first", "box_first")
