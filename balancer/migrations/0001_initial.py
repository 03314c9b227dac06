# The desired-state revisions moved here from the ``inference`` app.  The table
# (``inference_desiredstaterevision``), its columns, indexes and constraints
# stay as they are: this migration changes Django's state only, so an existing
# database upgrades without copying a row.  Its content type moves with it, so
# the permissions already granted on revisions keep applying.

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


CREATE_MODEL = migrations.CreateModel(
            name='DesiredStateRevision',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('created_at', models.DateTimeField(auto_now_add=True, db_index=True)),
                ('note', models.CharField(blank=True, default='', max_length=200)),
                ('model_kind', models.CharField(choices=[('None', 'none'), ('LocalToAgent', 'local to agent'), ('HuggingFace', 'Hugging Face'), ('Url', 'URL')], default='None', max_length=16)),
                ('model_local_path', models.TextField(blank=True, default='')),
                ('model_repo_id', models.TextField(blank=True, default='', verbose_name='Hugging Face repo id')),
                ('model_filename', models.TextField(blank=True, default='', verbose_name='Hugging Face filename')),
                ('model_revision', models.TextField(blank=True, default='', verbose_name='Hugging Face revision')),
                ('model_url', models.TextField(blank=True, default='', verbose_name='URL')),
                ('multimodal_projection_kind', models.CharField(choices=[('None', 'none'), ('LocalToAgent', 'local to agent'), ('HuggingFace', 'Hugging Face'), ('Url', 'URL')], default='None', max_length=16)),
                ('multimodal_projection_local_path', models.TextField(blank=True, default='')),
                ('multimodal_projection_repo_id', models.TextField(blank=True, default='', verbose_name='Hugging Face repo id')),
                ('multimodal_projection_filename', models.TextField(blank=True, default='', verbose_name='Hugging Face filename')),
                ('multimodal_projection_revision', models.TextField(blank=True, default='', verbose_name='Hugging Face revision')),
                ('multimodal_projection_url', models.TextField(blank=True, default='', verbose_name='URL')),
                ('chat_template_override', models.TextField(blank=True, null=True)),
                ('use_chat_template_override', models.BooleanField(default=False)),
                ('default_system_prompt', models.TextField(blank=True, default='')),
                ('n_batch', models.IntegerField(default=2048)),
                ('context_size', models.IntegerField(default=8192)),
                ('embedding_batch_size', models.IntegerField(default=256)),
                ('enable_embeddings', models.BooleanField(default=False)),
                ('image_resize_to_fit', models.IntegerField(default=1024)),
                ('k_cache_dtype', models.CharField(choices=[('F32', 'F32'), ('F16', 'F16'), ('BF16', 'BF16'), ('Q8_0', 'Q8_0'), ('Q4_0', 'Q4_0'), ('Q4_1', 'Q4_1'), ('IQ4_NL', 'IQ4_NL'), ('Q5_0', 'Q5_0'), ('Q5_1', 'Q5_1')], default='Q8_0', max_length=8)),
                ('v_cache_dtype', models.CharField(choices=[('F32', 'F32'), ('F16', 'F16'), ('BF16', 'BF16'), ('Q8_0', 'Q8_0'), ('Q4_0', 'Q4_0'), ('Q4_1', 'Q4_1'), ('IQ4_NL', 'IQ4_NL'), ('Q5_0', 'Q5_0'), ('Q5_1', 'Q5_1')], default='Q8_0', max_length=8)),
                ('min_p', models.FloatField(default=0.05)),
                ('n_gpu_layers', models.IntegerField(default=0)),
                ('penalty_frequency', models.FloatField(default=0.0)),
                ('penalty_last_n', models.IntegerField(default=-1)),
                ('penalty_presence', models.FloatField(default=0.8)),
                ('penalty_repeat', models.FloatField(default=1.1)),
                ('pooling_type', models.CharField(choices=[('Unspecified', 'Unspecified'), ('None', 'None'), ('Mean', 'Mean'), ('Cls', 'Cls'), ('Last', 'Last'), ('Rank', 'Rank')], default='Last', max_length=16)),
                ('temperature', models.FloatField(default=0.8)),
                ('top_k', models.IntegerField(default=80)),
                ('top_p', models.FloatField(default=0.8)),
                ('created_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, to=settings.AUTH_USER_MODEL)),
            ],
            options={
                'db_table': 'inference_desiredstaterevision',
                'ordering': ['-created_at', '-id'],
                'constraints': [models.CheckConstraint(condition=models.Q(models.Q(('model_kind', 'None'), ('model_local_path', ''), ('model_repo_id', ''), ('model_filename', ''), ('model_revision', ''), ('model_url', '')), models.Q(('model_kind', 'LocalToAgent'), ('model_local_path__startswith', '/'), models.Q(('model_local_path', ''), _negated=True), ('model_repo_id', ''), ('model_filename', ''), ('model_revision', ''), ('model_url', '')), models.Q(('model_kind', 'HuggingFace'), ('model_local_path', ''), models.Q(('model_repo_id', ''), _negated=True), models.Q(('model_filename', ''), _negated=True), models.Q(('model_revision', ''), _negated=True), ('model_url', '')), models.Q(('model_kind', 'Url'), ('model_local_path', ''), ('model_repo_id', ''), ('model_filename', ''), ('model_revision', ''), models.Q(('model_url', ''), _negated=True)), _connector='OR'), name='inference_desiredstaterevision_model_source'), models.CheckConstraint(condition=models.Q(models.Q(('multimodal_projection_kind', 'None'), ('multimodal_projection_local_path', ''), ('multimodal_projection_repo_id', ''), ('multimodal_projection_filename', ''), ('multimodal_projection_revision', ''), ('multimodal_projection_url', '')), models.Q(('multimodal_projection_kind', 'LocalToAgent'), ('multimodal_projection_local_path__startswith', '/'), models.Q(('multimodal_projection_local_path', ''), _negated=True), ('multimodal_projection_repo_id', ''), ('multimodal_projection_filename', ''), ('multimodal_projection_revision', ''), ('multimodal_projection_url', '')), models.Q(('multimodal_projection_kind', 'HuggingFace'), ('multimodal_projection_local_path', ''), models.Q(('multimodal_projection_repo_id', ''), _negated=True), models.Q(('multimodal_projection_filename', ''), _negated=True), models.Q(('multimodal_projection_revision', ''), _negated=True), ('multimodal_projection_url', '')), models.Q(('multimodal_projection_kind', 'Url'), ('multimodal_projection_local_path', ''), ('multimodal_projection_repo_id', ''), ('multimodal_projection_filename', ''), ('multimodal_projection_revision', ''), models.Q(('multimodal_projection_url', ''), _negated=True)), _connector='OR'), name='inference_desiredstaterevision_multimodal_projection_source'), models.CheckConstraint(condition=models.Q(('n_batch__gte', 1)), name='inference_desiredstaterevision_n_batch_positive'), models.CheckConstraint(condition=models.Q(('context_size__gte', 1)), name='inference_desiredstaterevision_context_size_positive'), models.CheckConstraint(condition=models.Q(('embedding_batch_size__gte', 1)), name='inference_desiredstaterevision_embedding_batch_size_positive'), models.CheckConstraint(condition=models.Q(('image_resize_to_fit__gte', 1)), name='inference_desiredstaterevision_image_resize_to_fit_positive'), models.CheckConstraint(condition=models.Q(('top_p__gte', 0.0), ('top_p__lte', 1.0)), name='inference_desiredstaterevision_top_p_probability'), models.CheckConstraint(condition=models.Q(('min_p__gte', 0.0), ('min_p__lte', 1.0)), name='inference_desiredstaterevision_min_p_probability'), models.CheckConstraint(condition=models.Q(('k_cache_dtype__in', ('F32', 'F16', 'BF16', 'Q8_0', 'Q4_0', 'Q4_1', 'IQ4_NL', 'Q5_0', 'Q5_1'))), name='inference_desiredstaterevision_k_cache_dtype_known'), models.CheckConstraint(condition=models.Q(('v_cache_dtype__in', ('F32', 'F16', 'BF16', 'Q8_0', 'Q4_0', 'Q4_1', 'IQ4_NL', 'Q5_0', 'Q5_1'))), name='inference_desiredstaterevision_v_cache_dtype_known'), models.CheckConstraint(condition=models.Q(('pooling_type__in', ('Unspecified', 'None', 'Mean', 'Cls', 'Last', 'Rank'))), name='inference_desiredstaterevision_pooling_type_known')],
            },
        )


def _move_content_type(apps, schema_editor, *, old: str, new: str):  # type: ignore[no-untyped-def]
    content_types = apps.get_model("contenttypes", "ContentType")
    if content_types.objects.filter(app_label=new, model="desiredstaterevision").exists():
        return
    content_types.objects.filter(app_label=old, model="desiredstaterevision").update(
        app_label=new
    )


def move_content_type(apps, schema_editor):  # type: ignore[no-untyped-def]
    _move_content_type(apps, schema_editor, old="inference", new="balancer")


def move_content_type_back(apps, schema_editor):  # type: ignore[no-untyped-def]
    _move_content_type(apps, schema_editor, old="balancer", new="inference")


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ("contenttypes", "0002_remove_content_type_name"),
        # The table is made by the inference app's migrations up to 0003.
        ("inference", "0003_merge_20261127_1111"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[CREATE_MODEL],
            database_operations=[],
        ),
        migrations.RunPython(move_content_type, move_content_type_back),
    ]
