"""sb3-dqn-ext: a from-scratch, drop-in DQN for Stable-Baselines3 with opt-in Rainbow extensions."""

from sb3_dqn_ext.buffers import PrioritizedReplayBuffer, ReplayBuffer
from sb3_dqn_ext.checkpoints import ResumableCheckpointCallback, learn_remaining, resume_from_checkpoint
from sb3_dqn_ext.dqn import ScratchDQN
from sb3_dqn_ext.errors import DivergenceError, ScratchDQNError
from sb3_dqn_ext.policies import CnnPolicy, MlpPolicy, MultiInputPolicy, NoisyLinear, QNetwork
from sb3_dqn_ext.rainbow import RainbowDQN
from sb3_dqn_ext.schedules import ExponentialSchedule, LinearSchedule

__version__ = "0.1.0"

__all__ = [
    "CnnPolicy",
    "DivergenceError",
    "ExponentialSchedule",
    "LinearSchedule",
    "MlpPolicy",
    "MultiInputPolicy",
    "NoisyLinear",
    "PrioritizedReplayBuffer",
    "QNetwork",
    "RainbowDQN",
    "ReplayBuffer",
    "ResumableCheckpointCallback",
    "ScratchDQN",
    "ScratchDQNError",
    "__version__",
    "learn_remaining",
    "resume_from_checkpoint",
]
