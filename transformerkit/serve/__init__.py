"""The HTTP server (`transformerkit serve`): OpenAI-compatible routes over loaded models, continuous batching for
decoders, and a web page for chat, translation (with its attention) and search. Needs the `serve` extra."""
