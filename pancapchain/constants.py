"""Names shared by every part of the package (one place, so they cannot drift)."""

IGNORE_INDEX = -100
IMAGE_TOKEN = "<image>"
BOX_OPEN = "<box>"
BOX_CLOSE = "</box>"

# The four PancapChain stages, in chain order.
STAGES = ("localize", "label", "discover", "caption")

# Box-prompted tasks trained by the same model next to the chain (see pancapchain.data.box_tasks):
# SGDiff SegCaptioning (box -> sentences about the boxed entity and its related entities, boxes inline)
# and SCA region captioning (box -> a short phrase).
EXTRA_TASKS = ("segcap", "region")

# Every prompt-defined task a recipe can train (data.stages keys); stage_ids of a batch index this tuple.
TASKS = STAGES + EXTRA_TASKS

# Box formats a recipe may choose (see pancapchain.data.boxes).
BOX_FORMATS = ("asmv2", "normalized")

# Integer grid of the ASMv2/PancapChain model box format: coordinates in [0, BOX_GRID].
BOX_GRID = 1000

DISCOVER_NONE = "None"
