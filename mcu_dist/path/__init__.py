"""The path: Bézier curves over any nn.Module, the (k, k_r) parameter mask, β schedules."""
