import { ConfigurableModuleBuilder } from '@nestjs/common';
import type { WorkflowModuleOptions } from './interfaces/workflow-module-options.interface.js';

export const {
  ConfigurableModuleClass: ConfigurableWorkflowModule,
  MODULE_OPTIONS_TOKEN: WORKFLOW_MODULE_OPTIONS,
  OPTIONS_TYPE: WORKFLOW_OPTIONS_TYPE,
  ASYNC_OPTIONS_TYPE: WORKFLOW_ASYNC_OPTIONS_TYPE,
} = new ConfigurableModuleBuilder<WorkflowModuleOptions>({ moduleName: 'Workflow' })
  .setClassMethodName('forRoot')
  .setFactoryMethodName('createWorkflowOptions')
  .setExtras({ isGlobal: true }, (definition, extras) => ({ ...definition, global: extras.isGlobal }))
  .build();

export type WorkflowModuleAsyncOptions = typeof WORKFLOW_ASYNC_OPTIONS_TYPE;
