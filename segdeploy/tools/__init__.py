"""Tools on top of the pipeline.

bench        ONNX Runtime against PyTorch eager: plan, measure, write the JSON
bench_config BenchConfig (bench's defaults) and the check of the command's options
timing       latency samples and percentiles, the machine's matrix-multiply peaks
bench_chart  the p50 latency chart
opprofile    ONNX Runtime's kernel time per operator type
demo         the whole pipeline on synthetic data
"""
