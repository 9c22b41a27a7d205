"""The config check of #1512's sliding-window attention (model.attn_window: keys at most that many positions back,
on model.attn_window_layers or every layer), run where the window is set. The attention backends take the window
as an argument (pgolf.attention).
"""


def check_config(config, bad):
    """model.attn_window and model.attn_window_layers (`bad(key, why)` raises): layer indices made ints."""
    if config.attn_window < 1:
        bad("attn_window", "must be a positive number of positions or null")
    if config.attn_window_layers is not None:
        config.attn_window_layers = [int(i) for i in config.attn_window_layers]
        if any(not 0 <= i < config.num_layers for i in config.attn_window_layers):
            bad("attn_window_layers", f"layer indices must be in 0..{config.num_layers - 1}")
