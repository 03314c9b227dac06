"""OpenAPI descriptions of the inference and OpenAI endpoints.

They are plain async Django views (DRF renders whole bodies, these stream), so
drf-spectacular cannot read them: their paths and shapes are written here, and
``paddler_project.openapi`` adds them to the generated schema.  A streamed
response is described by the schema of one of its lines.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def variant(name: str, payload: Schema) -> Schema:
    """A serde enum variant with a payload: ``{"Name": payload}``."""
    return {
        "type": "object",
        "properties": {name: payload},
        "required": [name],
        "additionalProperties": False,
    }


STRING = {"type": "string"}
INTEGER = {"type": "integer"}
BOOLEAN = {"type": "boolean"}
OBJECT = {"type": "object", "additionalProperties": True}

# Terminal variants of a generated token whose payload is a message.
FAILURE_VARIANTS = (
    "ChatTemplateError",
    "GrammarSyntaxError",
    "GrammarInitializationFailed",
    "GrammarRejectedModelOutput",
    "SamplerError",
    "MultimodalNotSupported",
    "ImageDecodingFailed",
)

COMPONENTS: dict[str, Schema] = {
    "Grammar": {
        "oneOf": [
            {
                "type": "object",
                "properties": {
                    "type": {"type": "string", "enum": ["gbnf"]},
                    "grammar": STRING,
                    "root": STRING,
                },
                "required": ["type", "grammar", "root"],
            },
            {
                "type": "object",
                "properties": {
                    "type": {"type": "string", "enum": ["json_schema"]},
                    "schema": {
                        "type": "string",
                        "description": "The JSON schema, as a JSON string.",
                    },
                },
                "required": ["type", "schema"],
            },
        ]
    },
    "TextPart": {
        "type": "object",
        "properties": {"type": {"type": "string", "enum": ["text"]}, "text": STRING},
        "required": ["type", "text"],
        "additionalProperties": False,
    },
    "ImageUrlPart": {
        "type": "object",
        "properties": {
            "type": {"type": "string", "enum": ["image_url"]},
            "image_url": {
                "type": "object",
                "properties": {
                    "url": {
                        "type": "string",
                        "description": (
                            "A base64 data: URL of a PNG, JPEG, WebP, GIF or BMP "
                            "image, or an http(s) URL the server fetches "
                            "(PADDLER_MAX_IMAGE_BYTES; 413 above it)."
                        ),
                    },
                    "detail": {
                        "type": "string",
                        "enum": ["auto", "low", "high"],
                        "description": "Accepted and ignored.",
                    },
                },
                "required": ["url"],
                "additionalProperties": False,
            },
        },
        "required": ["type", "image_url"],
        "additionalProperties": False,
    },
    "ConversationMessage": {
        "type": "object",
        "properties": {
            "role": STRING,
            "content": {
                "oneOf": [
                    STRING,
                    {
                        "type": "array",
                        "items": {"oneOf": [ref("TextPart"), ref("ImageUrlPart")]},
                    },
                ],
                "description": "Text, or parts (text, image_url).",
            },
        },
        "required": ["role", "content"],
    },
    "ContinueFromConversationHistoryParams": {
        "type": "object",
        "properties": {
            "add_generation_prompt": BOOLEAN,
            "conversation_history": {
                "type": "array",
                "items": ref("ConversationMessage"),
            },
            "enable_thinking": BOOLEAN,
            "max_tokens": INTEGER,
            "grammar": {**ref("Grammar"), "nullable": True},
            "tools": {"type": "array", "items": OBJECT},
            "parse_tool_calls": BOOLEAN,
        },
        "required": ["conversation_history", "max_tokens"],
        "additionalProperties": False,
    },
    "ContinueFromRawPromptParams": {
        "type": "object",
        "properties": {
            "raw_prompt": STRING,
            "max_tokens": INTEGER,
            "grammar": {**ref("Grammar"), "nullable": True},
        },
        "required": ["raw_prompt", "max_tokens"],
        "additionalProperties": False,
    },
    "GenerateEmbeddingBatchParams": {
        "type": "object",
        "properties": {
            "input_batch": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"id": STRING, "content": STRING},
                    "required": ["id", "content"],
                },
            },
            "normalization_method": {
                "oneOf": [
                    {"type": "string", "enum": ["L2", "None"]},
                    variant(
                        "RmsNorm",
                        {
                            "type": "object",
                            "properties": {"epsilon": {"type": "number"}},
                            "required": ["epsilon"],
                        },
                    ),
                ]
            },
        },
        "required": ["input_batch", "normalization_method"],
        "additionalProperties": False,
    },
    "Usage": {
        "type": "object",
        "properties": {
            "prompt_tokens": INTEGER,
            "cached_prompt_tokens": INTEGER,
            "content_tokens": INTEGER,
        },
        "additionalProperties": True,
    },
    "GeneratedToken": {
        "oneOf": [
            variant("ContentToken", STRING),
            variant(
                "Done",
                {"type": "object", "properties": {"usage": ref("Usage")}},
            ),
            *(variant(name, STRING) for name in FAILURE_VARIANTS),
        ]
    },
    "Embedding": {
        "oneOf": [
            variant(
                "Embedding",
                {
                    "type": "object",
                    "properties": {
                        "embedding": {"type": "array", "items": {"type": "number"}},
                        "normalization_method": OBJECT,
                        "pooling_type": STRING,
                        "source_document_id": STRING,
                    },
                },
            ),
            {"type": "string", "enum": ["Done"]},
        ]
    },
    "InferenceError": {
        "type": "object",
        "properties": {
            "code": {"type": "integer", "example": 503},
            "description": STRING,
        },
        "required": ["code", "description"],
    },
    "InferenceErrorBody": variant("error", ref("InferenceError")),
    "InferenceStreamLine": {
        "description": "One line of an NDJSON stream: a response, or an error "
        "that ends the stream.",
        "oneOf": [
            variant(
                "Response",
                {
                    "type": "object",
                    "properties": {
                        "generated_by": STRING,
                        "request_id": STRING,
                        "response": {
                            "oneOf": [
                                variant("GeneratedToken", ref("GeneratedToken")),
                                variant("Embedding", ref("Embedding")),
                            ]
                        },
                    },
                    "required": ["request_id", "response"],
                },
            ),
            variant(
                "Error",
                {
                    "type": "object",
                    "properties": {
                        "request_id": STRING,
                        "error": ref("InferenceError"),
                    },
                    "required": ["request_id", "error"],
                },
            ),
        ],
    },
    "OpenAIError": variant(
        "error",
        {
            "type": "object",
            "properties": {
                "message": STRING,
                "type": STRING,
                "param": {"type": "string", "nullable": True},
                "code": {"type": "string", "nullable": True},
            },
            "required": ["message", "type"],
        },
    ),
    "ChatCompletionRequest": {
        "type": "object",
        "properties": {
            "model": STRING,
            "messages": {"type": "array", "items": OBJECT},
            "stream": BOOLEAN,
            "temperature": {"type": "number"},
            "top_p": {"type": "number"},
            "max_tokens": INTEGER,
            "max_completion_tokens": INTEGER,
            "stop": {"oneOf": [STRING, {"type": "array", "items": STRING}]},
            "seed": INTEGER,
            "response_format": OBJECT,
            "tools": {"type": "array", "items": OBJECT},
            "tool_choice": {"oneOf": [STRING, OBJECT]},
        },
        "required": ["messages"],
    },
    "ChatCompletion": {
        "type": "object",
        "properties": {
            "id": STRING,
            "object": {"type": "string", "enum": ["chat.completion"]},
            "created": INTEGER,
            "model": STRING,
            "choices": {"type": "array", "items": OBJECT},
            "usage": OBJECT,
        },
    },
    "ChatCompletionChunk": {
        "type": "object",
        "properties": {
            "id": STRING,
            "object": {"type": "string", "enum": ["chat.completion.chunk"]},
            "created": INTEGER,
            "model": STRING,
            "choices": {"type": "array", "items": OBJECT},
        },
    },
    "CompletionRequest": {
        "type": "object",
        "properties": {
            "model": STRING,
            "prompt": {"oneOf": [STRING, {"type": "array", "items": STRING}]},
            "stream": BOOLEAN,
            "temperature": {"type": "number"},
            "top_p": {"type": "number"},
            "max_tokens": INTEGER,
            "stop": {"oneOf": [STRING, {"type": "array", "items": STRING}]},
            "seed": INTEGER,
        },
        "required": ["prompt"],
    },
    "Completion": {
        "type": "object",
        "properties": {
            "id": STRING,
            "object": {"type": "string", "enum": ["text_completion"]},
            "created": INTEGER,
            "model": STRING,
            "choices": {"type": "array", "items": OBJECT},
            "usage": OBJECT,
        },
    },
    "EmbeddingsRequest": {
        "type": "object",
        "properties": {
            "model": STRING,
            "input": {"oneOf": [STRING, {"type": "array", "items": STRING}]},
            "encoding_format": {"type": "string", "enum": ["float", "base64"]},
        },
        "required": ["input"],
    },
    "EmbeddingsResponse": {
        "type": "object",
        "properties": {
            "object": {"type": "string", "enum": ["list"]},
            "data": {"type": "array", "items": OBJECT},
            "model": STRING,
            "usage": OBJECT,
        },
    },
    "ResponseRequest": {
        "type": "object",
        "properties": {
            "model": STRING,
            "input": {"oneOf": [STRING, {"type": "array", "items": OBJECT}]},
            "instructions": STRING,
            "tools": {"type": "array", "items": OBJECT},
            "tool_choice": {"oneOf": [STRING, OBJECT]},
            "reasoning": OBJECT,
            "stream": BOOLEAN,
            "max_output_tokens": INTEGER,
            "temperature": {"type": "number"},
            "top_p": {"type": "number"},
        },
        "required": ["model", "input"],
    },
    "Response": {
        "type": "object",
        "properties": {
            "id": STRING,
            "object": {"type": "string", "enum": ["response"]},
            "created_at": INTEGER,
            "model": STRING,
            "status": STRING,
            "output": {
                "type": "array",
                "items": OBJECT,
                "description": "message, function_call and reasoning items",
            },
            "usage": OBJECT,
        },
    },
    "ResponseStreamEvent": {
        "type": "object",
        "properties": {
            "type": {
                "type": "string",
                "description": "response.created, response.output_text.delta, "
                "response.function_call_arguments.done, response.completed, ...",
            },
            "sequence_number": INTEGER,
        },
    },
    "Model": {
        "type": "object",
        "properties": {
            "id": STRING,
            "object": {"type": "string", "enum": ["model"]},
            "created": INTEGER,
            "owned_by": STRING,
        },
    },
    "ModelList": {
        "type": "object",
        "properties": {
            "object": {"type": "string", "enum": ["list"]},
            "data": {"type": "array", "items": ref("Model")},
        },
    },
}


def json_body(schema: Schema) -> Schema:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def inference_errors() -> dict[str, Schema]:
    described = {
        "400": "Invalid parameters (the description names the field)",
        "401": "No valid inference API key",
        "413": "Body too large",
        "503": "Buffered requests overflow (the buffer is full)",
        "504": "Waiting for available slot timed out",
    }
    return {
        status: {
            "description": text,
            "content": {"application/json": {"schema": ref("InferenceErrorBody")}},
        }
        for status, text in described.items()
    }


def ndjson_operation(summary: str, params: str) -> Schema:
    return {
        "post": {
            "tags": ["inference"],
            "summary": summary,
            "operationId": params,
            "security": [{"inferenceApiKey": []}, {}],
            "requestBody": json_body(ref(params)),
            "responses": {
                "200": {
                    "description": "A stream of newline-delimited JSON: one "
                    "InferenceStreamLine per line, until a terminal token "
                    "(Done or a failure) or an Error line.",
                    "content": {
                        "application/json": {"schema": ref("InferenceStreamLine")}
                    },
                },
                **inference_errors(),
            },
        }
    }


def openai_errors() -> dict[str, Schema]:
    return {
        status: {
            "description": text,
            "content": {"application/json": {"schema": ref("OpenAIError")}},
        }
        for status, text in {
            "400": "Invalid request (param names the field)",
            "401": "No valid API key",
            "503": "Buffer full",
            "504": "Timed out",
        }.items()
    }


def openai_operation(
    summary: str, operation_id: str, request: str, whole: str, chunk: str | None
) -> Schema:
    content: Schema = {"application/json": {"schema": ref(whole)}}
    description = f"The whole {whole}."
    if chunk is not None:
        content["text/event-stream"] = {"schema": {"type": "string"}}
        description += (
            f' With "stream": true, Server-Sent Events: each "data: " line '
            f'holds one {chunk} as JSON; the last is "data: [DONE]".'
        )
    return {
        "post": {
            "tags": ["openai"],
            "summary": summary,
            "operationId": operation_id,
            "security": [{"inferenceApiKey": []}, {}],
            "requestBody": json_body(ref(request)),
            "responses": {
                "200": {"description": description, "content": content},
                **openai_errors(),
            },
        }
    }


PATHS: dict[str, Schema] = {
    "/health": {
        "get": {
            "tags": ["inference"],
            "summary": "Liveness",
            "operationId": "health",
            "security": [],
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    },
    "/api/v1/continue_from_conversation_history": ndjson_operation(
        "Generate from a conversation (chat template applied)",
        "ContinueFromConversationHistoryParams",
    ),
    "/api/v1/continue_from_raw_prompt": ndjson_operation(
        "Generate from a raw prompt", "ContinueFromRawPromptParams"
    ),
    "/api/v1/generate_embedding_batch": ndjson_operation(
        "Embed a batch of documents", "GenerateEmbeddingBatchParams"
    ),
    "/api/v1/inference_socket": {
        "get": {
            "tags": ["inference"],
            "summary": "The inference WebSocket",
            "operationId": "inference_socket",
            "description": 'A WebSocket: send {"Request": {"id", "request": '
            '{"ContinueFromConversationHistory": ...}}} (or '
            "ContinueFromRawPrompt), receive InferenceStreamLine messages "
            'keyed by that id, cancel with {"Notification": '
            '{"StopRespondingTo": id}}.',
            "security": [{"inferenceApiKey": []}, {}],
            "responses": {"101": {"description": "Switching to the WebSocket"}},
        }
    },
    "/v1/chat/completions": openai_operation(
        "OpenAI chat completions",
        "chat_completions",
        "ChatCompletionRequest",
        "ChatCompletion",
        "ChatCompletionChunk",
    ),
    "/v1/completions": openai_operation(
        "OpenAI completions",
        "completions",
        "CompletionRequest",
        "Completion",
        "Completion",
    ),
    "/v1/responses": openai_operation(
        "OpenAI responses (text, function calls, reasoning items)",
        "responses",
        "ResponseRequest",
        "Response",
        "ResponseStreamEvent",
    ),
    "/v1/embeddings": openai_operation(
        "OpenAI embeddings",
        "embeddings",
        "EmbeddingsRequest",
        "EmbeddingsResponse",
        None,
    ),
    "/v1/models": {
        "get": {
            "tags": ["openai"],
            "summary": "The served model",
            "operationId": "list_models",
            "security": [{"inferenceApiKey": []}, {}],
            "responses": {
                "200": {
                    "description": "The models",
                    "content": {"application/json": {"schema": ref("ModelList")}},
                },
                **openai_errors(),
            },
        }
    },
    "/v1/models/{model}": {
        "get": {
            "tags": ["openai"],
            "summary": "One model",
            "operationId": "retrieve_model",
            "security": [{"inferenceApiKey": []}, {}],
            "parameters": [
                {"name": "model", "in": "path", "required": True, "schema": STRING}
            ],
            "responses": {
                "200": {
                    "description": "The model",
                    "content": {"application/json": {"schema": ref("Model")}},
                },
                "404": {
                    "description": "No such model",
                    "content": {"application/json": {"schema": ref("OpenAIError")}},
                },
            },
        }
    },
}

SECURITY_SCHEMES: dict[str, Schema] = {
    "inferenceApiKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "An inference API key (the panel's, or one of "
        "PADDLER_INFERENCE_API_KEYS); none needed while no key exists.",
    }
}
