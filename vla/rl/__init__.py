"""PPO fine-tuning of the VLA with stable-baselines3: the policy as an SB3 actor-critic
(sb3_policy), the env in the policy's action-token space (token_env), PPO with a KL
anchor and a critic warm-up (ppo), and the training workspace (finetune)."""
