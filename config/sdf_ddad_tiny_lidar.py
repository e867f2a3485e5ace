# The tiny DDAD SDF run plus L1 depth supervision from the LiDAR, for users who have it.
# (Its depth numbers are then no longer a self-supervised result.)
import copy

from config.sdf_ddad_tiny import config as base

config = copy.deepcopy(base)
config.name = "sdf_ddad_tiny_lidar"
config.model.depth_source = "lidar"
config.model.loss_weights["depth"] = 0.1
